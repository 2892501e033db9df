"""A scikit-learn model saved with pickle or joblib, converted to ONNX and stored:

    python train_and_save.py convert model.pkl --trust --name iris

Loading a pickle runs code from it, so `convert` only loads files the user vouches for with
`--trust` (and the service itself never loads one). The model is converted with skl2onnx,
both are run on sample rows, and the conversion is stored only if the ONNX model's answers
match scikit-learn's (`--max-diff`); the measured difference, the source file's SHA-256 and
the converters' versions are stored with it. The import options of `--onnx` apply.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import importing, model_store

SAMPLE_ROWS = 256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_and_save.py convert",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("file", type=Path, help="a scikit-learn model: pickle or joblib file")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="load the file although loading a pickle runs code from it: only for files you "
        "made, or whose maker you trust",
    )
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--version", help="model version (default: from the ONNX file's hash)")
    parser.add_argument(
        "--max-diff",
        type=float,
        default=1e-4,
        help="largest difference allowed between scikit-learn's and the ONNX model's answers "
        "on the sample rows (default: %(default)s)",
    )
    importing.add_arguments(parser)
    return parser


def load_trusted(path: Path) -> Any:
    """The estimator in a pickle or joblib file (joblib reads both, compressed or not)."""
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # a pickle can fail in any way its code does
        raise model_store.InvalidModel(f"{path.name} could not be loaded: {exc}") from None


def sample_rows(model: Any, rows: int = SAMPLE_ROWS) -> np.ndarray:
    """Rows to compare the two models on: normal with a standard deviation of 3, the same for
    every model (the training data is not at hand). They test the conversion's arithmetic,
    not the model's accuracy."""
    n = int(model.n_features_in_)
    return np.random.default_rng(0).normal(0.0, 3.0, size=(rows, n)).astype(np.float32)


def to_onnx(model: Any, x: np.ndarray) -> bytes:
    from skl2onnx import to_onnx as convert
    from sklearn.base import is_classifier

    options = {id(model): {"zipmap": False}} if is_classifier(model) else None
    proto = convert(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    return proto.SerializeToString()


def compare(model: Any, onnx_bytes: bytes, x: np.ndarray) -> dict[str, Any]:
    """scikit-learn's answers against the ONNX model's on `x`."""
    import onnxruntime as ort
    from sklearn.base import is_classifier

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    if is_classifier(model) and hasattr(model, "predict_proba"):
        labels, probabilities = outputs[0], outputs[1]
        proba = model.predict_proba(x)
        diff = float(np.max(np.abs(probabilities - proba)))
        # Labels are compared where the best class is clear: where two classes tie (a forest's
        # votes), float rounding may pick either, in scikit-learn as in ONNX Runtime.
        top = np.sort(proba, axis=1)
        clear = (top[:, -1] - top[:, -2]) > 1e-6 if proba.shape[1] > 1 else np.ones(len(x), bool)
        agree = float(np.mean((labels == model.predict(x))[clear])) if clear.any() else 1.0
        return {
            "rows": len(x),
            "max_abs_diff": diff,
            "labels_agree": agree,
            "ties": int((~clear).sum()),
        }
    want = np.asarray(model.predict(x), dtype=np.float64).reshape(len(x), -1)
    got = np.asarray(outputs[0], dtype=np.float64).reshape(len(x), -1)
    return {"rows": len(x), "max_abs_diff": float(np.max(np.abs(got - want)))}


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model_store.use_project_store()
    try:
        if not args.file.is_file():
            raise model_store.InvalidModel(f"{args.file}: no such file")
        data = args.file.read_bytes()
        kind = model_store.not_onnx(data)
        if kind is None:
            raise model_store.InvalidModel(
                f"{args.file.name} is not a pickle or joblib file (ONNX, perhaps: import it with "
                "--onnx)"
            )
        if "pickle" not in kind and "compressed" not in kind:
            raise model_store.InvalidModel(f"{args.file.name} is {kind}")
        if not args.trust:
            parser.error(
                f"{args.file.name} is a pickle: loading it runs code from it. Convert it only "
                "if you made it or trust who did, with --trust"
            )
        try:
            import skl2onnx  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise model_store.InvalidModel(
                "converting needs scikit-learn and skl2onnx: pip install -e '.[convert]' "
                "(make venv installs them)"
            ) from None
        model = load_trusted(args.file)
        if not hasattr(model, "predict") or not hasattr(model, "n_features_in_"):
            raise model_store.InvalidModel(
                f"{args.file.name} holds a {type(model).__name__}, not a fitted scikit-learn "
                "model: export other frameworks' models to ONNX where they were trained"
            )
        x = sample_rows(model)
        with warnings.catch_warnings():
            # A model fitted on a DataFrame warns that plain rows have no column names: they
            # are the same columns, in order.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            try:
                onnx_bytes = to_onnx(model, x)
            except Exception as exc:  # skl2onnx raises many types for what it can't convert
                raise model_store.InvalidModel(
                    f"skl2onnx can't convert {type(model).__name__}: {exc}"
                ) from None
            check = compare(model, onnx_bytes, x)
        if check["max_abs_diff"] > args.max_diff or check.get("labels_agree", 1.0) < 1.0:
            raise model_store.InvalidModel(
                f"the ONNX conversion answers differently from scikit-learn on {len(x)} sample "
                f"rows ({check}): not saved (--max-diff {args.max_diff:g})"
            )
        options = importing.options_from(args)
        names = getattr(model, "feature_names_in_", None)
        if not options.features and names is not None and len(names) == x.shape[1]:
            # The model's own column names, as it was fitted on a DataFrame: its CSV columns.
            options = replace(options, features=tuple(str(n) for n in names))
        metadata = {"source": "convert", "converted_from": _provenance(args.file, data, model)}
        metadata["converted_from"]["check"] = check
        tag, note = model_store.save(
            onnx_bytes, args.name, args.version, {"origin": "converted"}, metadata, options
        )
    except model_store.InvalidModel as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if note != "saved":
        print(note, file=sys.stderr)
    print(
        f"converted {type(model).__name__}: largest difference from scikit-learn on "
        f"{check['rows']} rows {check['max_abs_diff']:.3g}",
        file=sys.stderr,
    )
    print(tag)
    return 0


def _provenance(path: Path, data: bytes, model: Any) -> dict[str, Any]:
    import onnx
    import skl2onnx
    import sklearn

    return {
        "file": path.name,
        "sha256": model_store.sha256_bytes(data),
        "estimator": type(model).__name__,
        "converter": {
            "skl2onnx": skl2onnx.__version__,
            "scikit-learn": sklearn.__version__,
            "onnx": onnx.__version__,
        },
    }
