"""ONNX files in and out of the BentoML model store.

One place knows the store's layout: the file name inside a model, the metadata
keys, and how an ONNX file's signature is read and checked.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

from onnx_serving.model import signature
from onnx_serving.model.file_kinds import NOT_ONNX, file_kind
from onnx_serving.model.import_options import ImportOptions, read_signature
from onnx_serving.model.layout import ONNX_FILENAME  # re-exported: the store's layout
from onnx_serving.model.signature import InvalidModel

# Where the Makefile keeps the store: the project's own .bentoml, so a clone is self-contained.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_STORE = PROJECT_ROOT / ".bentoml"


class ModelNotFound(LookupError):
    """No model of that tag in the store."""


class ModelIntegrityError(RuntimeError):
    """The file in the store is not the file that was saved: refuse to serve it."""


def use_project_store() -> None:
    """Point BentoML at the project's store unless BENTOML_HOME says otherwise.

    train_and_save.py calls this before it touches the store, so that it and `make serve`
    (the Makefile exports the same BENTOML_HOME) agree on one store whether or not it runs
    through make. Only inside a checkout (where train_and_save.py sits beside the package);
    images set BENTOML_HOME themselves. (`bentoml serve` resolves its store before it
    imports service.py, too early for this: run it through make, or export BENTOML_HOME.)
    """
    if (PROJECT_ROOT / "train_and_save.py").is_file():
        os.environ.setdefault("BENTOML_HOME", str(PROJECT_STORE))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_onnx_file(path: Path) -> tuple[bytes, bool]:
    """The model's bytes, and whether weights kept in external-data files were inlined.

    torch.onnx.export writes weights to `<file>.data` beside the model by default; the
    store holds one self-contained file, so such weights are read and written inline.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    data = path.read_bytes()
    kind = file_kind(data)
    if kind:
        raise InvalidModel(f"{path.name} is {NOT_ONNX[kind]}")
    try:
        proto = onnx.load_model_from_string(data)  # external data stays unread here
    except Exception as exc:  # onnx raises several unrelated types for bad files
        raise InvalidModel(f"not a valid ONNX model: {exc}") from None
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return data, False
    try:
        proto = onnx.load(str(path))
        return proto.SerializeToString(), True
    except Exception as exc:
        raise InvalidModel(f"cannot read the model's external data beside {path}: {exc}") from None


def inspect(onnx_bytes: bytes, options: ImportOptions) -> signature.Signature:
    """Check the file with onnx.checker, load it in ONNX Runtime, read its signature and run
    it once on the smallest input it declares. InvalidModel says what is wrong."""
    import onnx
    import onnxruntime as ort

    from onnx_serving.model.runner import LoadedModel, session_options, trial_run

    try:
        proto = onnx.load_model_from_string(onnx_bytes)
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises several unrelated types for bad files
        raise InvalidModel(f"not a valid ONNX model: {exc}") from None
    try:
        session = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise InvalidModel(f"ONNX Runtime cannot load the model: {exc}") from None
    sig = read_signature(proto, session, options)
    try:
        trial_run(LoadedModel("the model", session, sig, {}))
    except RuntimeError as exc:
        raise InvalidModel(str(exc)) from None
    return sig


def signature_of(stored: Any) -> signature.Signature:
    """The signature recorded with a stored model (read from its file for older entries)."""
    recorded = stored.info.metadata.get("signature", {})
    if recorded.get("format") == signature.FORMAT:
        return signature.Signature.from_metadata(recorded)
    return inspect(Path(stored.path_of(ONNX_FILENAME)).read_bytes(), ImportOptions())


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
    options: ImportOptions | None = None,
) -> tuple[str, str]:
    """Store the ONNX bytes as NAME:VERSION with its signature and hash; return the tag and
    what happened, in words. An import never silently does nothing:

    - the same bytes read the same way (the same signature: labels, columns, image recipe,
      NaN) under an existing tag: nothing to store, and the note says so;
    - the same bytes with other import options: without --version, a new version named
      after both (`sha256-<file>-<options>`), which `NAME:latest` then is; with --version,
      refused, naming the option to change;
    - different bytes under an existing tag: refused rather than overwritten.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    sig = inspect(onnx_bytes, options or ImportOptions())
    digest = sha256_bytes(onnx_bytes)
    read_as = sig.to_metadata()
    tag = f"{name}:{version or default_version(digest)}"
    for _ in range(2):
        try:
            existing = bentoml.models.get(tag)
        except NotFound:
            break
        if existing.info.metadata.get("sha256") != digest:
            raise InvalidModel(
                f"{tag} already exists with different content; choose another --version"
            )
        if _same(existing.info.metadata.get("signature"), read_as):
            return str(
                existing.tag
            ), f"unchanged: {existing.tag} already holds this file, read the same way"
        if version is not None:
            raise InvalidModel(
                f"{tag} already holds this file with other import options "
                f"({_differences(existing.info.metadata.get('signature') or {}, read_as)}); "
                "choose another --version, or leave --version out for one named after both"
            )
        tag = f"{name}:{default_version(digest)}-{sha256_bytes(_canonical(read_as))[:8]}"
    else:  # both turns found a tag: the options' own version can't be taken either
        raise InvalidModel(f"{tag}: could not choose a version")

    full_metadata = {
        **metadata,
        "sha256": digest,
        "signature": read_as,
        **({"batching": batching_profile(onnx_bytes, sig)} if sig.batchable else {}),
        "onnx_file": ONNX_FILENAME,
        "libraries": library_versions(),
    }
    with bentoml.models.create(tag, labels=labels, metadata=full_metadata) as ref:
        Path(ref.path_of(ONNX_FILENAME)).write_bytes(onnx_bytes)
    note = (
        "saved"
        if tag.endswith(default_version(digest)) or version
        else (
            f"saved as a new version: the same file as {name}:{default_version(digest)}, read with "
            "other import options"
        )
    )
    return str(ref.tag), note


def _canonical(value: Any) -> bytes:
    import json

    return json.dumps(value, sort_keys=True, default=str).encode()


def _same(recorded: Any, read_as: dict[str, Any]) -> bool:
    return recorded is not None and _canonical(recorded) == _canonical(read_as)


def _differences(recorded: dict[str, Any], read_as: dict[str, Any]) -> str:
    """Which parts of the signature the options changed: classes, columns, image, NaN..."""
    keys = sorted(
        k
        for k in set(recorded) | set(read_as)
        if _canonical(recorded.get(k)) != _canonical(read_as.get(k))
    )
    names = {
        "classes": "--labels",
        "columns": "--features",
        "image": "--image-*",
        "allow_nan": "--allow-nan",
    }
    return ", ".join(names.get(k, k) for k in keys) or "the signature"


def batching_profile(onnx_bytes: bytes, sig: signature.Signature) -> dict[str, Any]:
    """The model's call costs and the batching settings chosen from them (batching.py)."""
    import onnxruntime as ort

    from onnx_serving.model import batching
    from onnx_serving.model.runner import session_options

    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    return batching.profile(session, sig)


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


def get_verified_set(refs: list[str]) -> tuple[list[Any], signature.Signature]:
    """Several stored versions to serve side by side, each verified as get_verified does, and
    the signature they share: every version must take and give the same tensors (the request
    and response bodies are built once, from it)."""
    stored = [get_verified(ref) for ref in refs]
    tags = [str(s.tag) for s in stored]
    if len(set(tags)) != len(tags):
        raise InvalidModel(f"MODEL_TAGS names a version twice: {tags}")
    sigs = [signature_of(s) for s in stored]

    def contract(sig: signature.Signature) -> tuple:
        def specs(ts: tuple) -> tuple:
            return tuple(
                (t.name, t.onnx_type, tuple(d if signature.is_static(d) else "?" for d in t.shape))
                for t in ts
            )

        return specs(sig.inputs), specs(sig.outputs), sig.batch, sig.classes

    for tag, sig in zip(tags[1:], sigs[1:], strict=True):
        if contract(sig) != contract(sigs[0]):
            raise InvalidModel(
                f"{tag} takes or gives other tensors than {tags[0]}; versions served side by "
                "side must share their inputs and outputs (serve the other in its own service)"
            )
    return stored, sigs[0]


def bentoml_home() -> str:
    """Where BentoML keeps its store: BENTOML_HOME, else ~/bentoml (BentoML's documented
    default)."""
    return os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")


def has_model(name: str) -> bool:
    import bentoml

    return any(m.tag.name == name for m in bentoml.models.list())
