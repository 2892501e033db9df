"""ONNX files in and out of the BentoML model store.

One place knows the store's layout: the file name inside a model, the metadata
keys, and how an ONNX file's signature is read and checked.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

ONNX_FILENAME = "model.onnx"
FLOAT_TENSOR = "tensor(float)"


class InvalidModel(ValueError):
    """An ONNX file that this service can't serve; the message says why."""


class ModelNotFound(LookupError):
    """No model of that tag in the store."""


class ModelIntegrityError(RuntimeError):
    """The file in the store is not the file that was saved: refuse to serve it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dims(shape: list[Any]) -> list[int | str | None]:
    # ONNX Runtime reports symbolic dimensions as strings and unknown ones as None.
    return [d if isinstance(d, (int, str)) or d is None else str(d) for d in shape]


def read_signature(onnx_bytes: bytes) -> dict[str, Any]:
    """Load the model in ONNX Runtime and describe its inputs and outputs.

    Raises InvalidModel unless the model takes exactly one float32 tensor of rank 1
    or 2 (rows, or rows x features), which is what the HTTP API feeds it.
    """
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load_model_from_string(onnx_bytes)
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises several unrelated types for bad files
        raise InvalidModel(f"not a valid ONNX model: {exc}") from exc
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModel(f"ONNX Runtime cannot load the model: {exc}") from exc

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise InvalidModel(f"the model must take exactly one input tensor, it takes {names}")
    (inp,) = inputs
    if inp.type != FLOAT_TENSOR:
        raise InvalidModel(f"input {inp.name!r} must be {FLOAT_TENSOR} (float32), not {inp.type}")
    if len(inp.shape) not in (1, 2):
        raise InvalidModel(
            f"input {inp.name!r} must have rank 1 [N] or 2 [N, features], has shape {inp.shape}"
        )
    n_features = inp.shape[1] if len(inp.shape) == 2 else 1
    return {
        "inputs": [{"name": i.name, "dtype": i.type, "shape": _dims(i.shape)} for i in inputs],
        "outputs": [{"name": o.name, "dtype": o.type, "shape": _dims(o.shape)} for o in outputs],
        "n_features": n_features if isinstance(n_features, int) else None,
        "opset": max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")),
        "ir_version": proto.ir_version,
    }


def library_versions() -> dict[str, str]:
    import bentoml
    import numpy
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "bentoml": bentoml.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def default_version(sha256: str) -> str:
    """A version named after the content: the same file always gets the same tag."""
    return f"sha256-{sha256[:16]}"


def save(
    onnx_bytes: bytes,
    name: str,
    version: str | None,
    labels: dict[str, str],
    metadata: dict[str, Any],
) -> str:
    """Store the ONNX bytes as NAME:VERSION with its signature and hash; return the tag.

    Saving the same bytes under an existing tag is a no-op, so re-running is safe;
    different bytes under an existing tag are refused rather than overwritten.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    signature = read_signature(onnx_bytes)
    digest = sha256_bytes(onnx_bytes)
    tag = f"{name}:{version or default_version(digest)}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("sha256") == digest:
            return str(existing.tag)
        raise InvalidModel(f"{tag} already exists with different content; choose another --version")

    full_metadata = {
        **metadata,
        "sha256": digest,
        "signature": signature,
        "onnx_file": ONNX_FILENAME,
        "libraries": library_versions(),
    }
    with bentoml.models.create(tag, labels=labels, metadata=full_metadata) as ref:
        Path(ref.path_of(ONNX_FILENAME)).write_bytes(onnx_bytes)
    return str(ref.tag)


def get_verified(ref: str) -> Any:
    """The stored bentoml Model for NAME:VERSION or NAME:latest, its file's SHA-256 checked
    against the one recorded when it was saved."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(ref)
    except NotFound:
        raise ModelNotFound(
            f"model {ref} is not in the model store ({bentoml_home()}): run `make model`, "
            "or `python train_and_save.py --onnx FILE --name NAME` for your own model"
        ) from None
    path = stored.path_of(ONNX_FILENAME)
    expected = stored.info.metadata.get("sha256")
    actual = sha256_file(path)
    if expected != actual:
        raise ModelIntegrityError(
            f"refusing to serve {stored.tag}: {path} has SHA-256 {actual}, "
            f"but the model store recorded {expected}"
        )
    return stored


def bentoml_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def has_model(name: str) -> bool:
    import bentoml

    return any(m.tag.name == name for m in bentoml.models.list())
