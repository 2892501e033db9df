"""Optimized variants of a stored model, made with ONNX Runtime's own tools and saved as a
new version of it:

    python train_and_save.py optimize TAG --int8 [--max-error 0.05] [--version V]
    python train_and_save.py optimize TAG --fp16 [--max-error 0.01]

--int8: dynamic quantization (onnxruntime.quantization.quantize_dynamic: int8 weights,
activations quantized at run time); --fp16: float16 weights and arithmetic
(onnxruntime.transformers.float16, inputs and outputs kept float32), so either variant takes
and gives what its parent does and can be served beside it, as a canary or a shadow.

The variant is run against its parent on 256 sample rows (random normal floats): its largest
absolute error, and for classifiers the share of rows whose top class agrees, are recorded
with its size and its call costs at 1..256 rows (both models timed the same way). A variant
whose error exceeds --max-error is refused, and nothing is saved.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serving.model import batching, signing
from onnx_serving.model import store as model_store
from onnx_serving.model.runner import session_options

SAMPLE_ROWS = 256


def make_variant(onnx_bytes: bytes, mode: str) -> bytes:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = onnx.load_model_from_string(onnx_bytes)
    # Exporters' shape annotations on intermediate values can disagree with what ONNX's
    # shape inference finds (PyTorch's, on transposed weights): the tools infer them anew.
    proto.graph.ClearField("value_info")
    try:
        if mode == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with tempfile.TemporaryDirectory() as tmp:
                src, dst = Path(tmp) / "parent.onnx", Path(tmp) / "variant.onnx"
                onnx.save(proto, str(src))
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
                return dst.read_bytes()
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = OnnxModel(convert_float_to_float16(proto, keep_io_types=True))
        model.topological_sort()  # the converter appends its input casts at the end
        return model.model.SerializeToString()
    except Exception as exc:  # the tools raise many kinds; say which and why
        raise model_store.InvalidModel(
            f"ONNX Runtime's {mode} conversion failed: {type(exc).__name__}: {exc}"
        ) from None


def compare(parent: Any, variant: Any, sig: Any) -> dict[str, Any]:
    """The variant's outputs against its parent's on the same sample rows."""
    feeds = batching.sample_feeds(sig, SAMPLE_ROWS if sig.batchable else 1)
    want = dict(zip([o.name for o in parent.get_outputs()], parent.run(None, feeds), strict=True))
    got = dict(zip([o.name for o in variant.get_outputs()], variant.run(None, feeds), strict=True))
    errors = {}
    for name, a in want.items():
        a, b = np.asarray(a), np.asarray(got[name])
        if a.dtype.kind in "fiu" and a.size:
            errors[name] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    result: dict[str, Any] = {"max_abs_error": max(errors.values(), default=0.0)}
    if sig.classes:
        # The class-score output: the float output with one column per class.
        scores = next(
            n for n, a in want.items() if np.asarray(a).ndim == 2 and a.shape[1] == len(sig.classes)
        )
        agree = np.argmax(want[scores], axis=1) == np.argmax(got[scores], axis=1)
        result["class_agreement"] = float(np.mean(agree))
    return result


def optimize(
    tag: str, mode: str, max_error: float, version: str | None, sign_key: Path | None = None
) -> tuple[str, dict]:
    import onnxruntime as ort

    stored = model_store.get_verified(tag)
    lineage = parent_signature(stored, sign_key)
    sig = model_store.signature_of(stored)
    parent_bytes = Path(stored.path_of(model_store.ONNX_FILENAME)).read_bytes()
    variant_bytes = make_variant(parent_bytes, mode)

    def session(b: bytes) -> Any:
        return ort.InferenceSession(
            b, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )

    parent, variant = session(parent_bytes), session(variant_bytes)
    report = {
        "parent": str(stored.tag),
        "optimization": mode,
        "size_bytes": len(variant_bytes),
        "parent_size_bytes": len(parent_bytes),
        **compare(parent, variant, sig),
        "cost_ms": batching.call_costs(variant, sig) if sig.batchable else {},
        "parent_cost_ms": batching.call_costs(parent, sig) if sig.batchable else {},
        "max_error_allowed": max_error,
    }
    if report["max_abs_error"] > max_error:
        raise model_store.InvalidModel(
            f"the {mode} variant of {stored.tag} is off by up to {report['max_abs_error']:.3g} "
            f"on {SAMPLE_ROWS} sample rows, more than --max-error {max_error:g}: not saved"
        )
    digest = model_store.sha256_bytes(variant_bytes)
    labels = {**stored.info.labels, "parent": stored.tag.version, "optimization": mode}
    new_tag, _ = model_store.save(
        variant_bytes,
        stored.tag.name,
        version or f"{mode}-{digest[:16]}",
        labels,
        {"optimized": report, "origin": "optimize", **lineage},
    )
    if sign_key is not None:
        signing.sign_stored(new_tag, sign_key, None, [])
    return new_tag, report


def parent_signature(stored: Any, sign_key: Path | None) -> dict[str, Any]:
    """The parent's signature, for the variant's metadata (`parent_signature`: the bundle's
    SHA-256 and signer), checked before anything is made: with --sign-key, the parent must be
    signed, and by that key."""
    parent_dir = Path(stored.path)
    if not signing.is_signed(parent_dir):
        if sign_key is not None:
            raise signing.SigningError(
                f"{stored.tag} is not signed, so its variant can't carry a signature of its "
                f"line: sign it first (train_and_save.py sign {stored.tag} --key ...)"
            )
        return {}
    signer = signing.signer(parent_dir)["signed_by"]
    if sign_key is not None and signer.startswith("key sha256:"):
        mine = signing.key_fingerprint(sign_key)
        if mine is None:
            raise signing.SigningError(f"{sign_key} is not an unencrypted EC private key (PEM)")
        if signer != f"key sha256:{mine}":
            raise signing.SigningError(
                f"{stored.tag} was signed by another key ({signer}) than {sign_key.name}: a "
                "variant is signed by its parent's key"
            )
    return {"parent_signature": {"sha256": signing.bundle_digest(parent_dir), "signed_by": signer}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="train_and_save.py optimize", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("tag", help="the stored model to optimize, NAME:VERSION or NAME:latest")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--int8", action="store_const", const="int8", dest="mode")
    kind.add_argument("--fp16", action="store_const", const="fp16", dest="mode")
    parser.add_argument(
        "--max-error",
        type=float,
        default=0.01,
        help="largest absolute error allowed against the parent (default: %(default)s)",
    )
    parser.add_argument("--version", help="the new version (default: <mode>-<sha256 prefix>)")
    parser.add_argument(
        "--sign-key",
        type=Path,
        metavar="PEM",
        help="sign the variant with this EC private key, the one that signed its parent",
    )
    args = parser.parse_args(argv)
    model_store.use_project_store()
    try:
        tag, report = optimize(args.tag, args.mode, args.max_error, args.version, args.sign_key)
    except (model_store.InvalidModel, model_store.ModelNotFound, signing.SigningError) as exc:
        print(f"error: {exc}")
        return 1
    costs, parent_costs = report["cost_ms"], report["parent_cost_ms"]
    gain = " ".join(
        f"{rows} rows {parent_costs[rows]:.3f} -> {costs[rows]:.3f} ms;" for rows in costs
    )
    print(
        f"{tag}: {report['size_bytes'] / 1e6:.2f} MB (parent "
        f"{report['parent_size_bytes'] / 1e6:.2f} MB), max abs error {report['max_abs_error']:.3g}"
        + (
            f", class agreement {report['class_agreement']:.1%}"
            if "class_agreement" in report
            else ""
        )
        + (f"; call time {gain}" if gain else "")
    )
    return 0
