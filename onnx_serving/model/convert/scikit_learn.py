"""A scikit-learn model from a pickle or joblib file, converted with skl2onnx.

Both models are run on 256 sample rows: probabilities (or predictions) must agree within
`--max-diff`, and labels wherever the best class is clear. A model fitted on a DataFrame
keeps its column names as its CSV columns.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np

from onnx_serving.model.convert import Conversion, InvalidModel, requires

WHAT = "a pickle"
SAMPLE_ROWS = 256


def load_trusted(data: bytes, name: str) -> Any:
    """The estimator in a pickle or joblib file (joblib reads both, compressed or not)."""
    import io

    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # a pickle can fail in any way its code does
        raise InvalidModel(f"{name} could not be loaded: {exc}") from None


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
    return {
        "rows": len(x),
        "max_abs_diff": float(np.max(np.abs(got - want))),
        "scale": float(np.max(np.abs(want))),
    }


def convert(args: argparse.Namespace, parser: argparse.ArgumentParser, data: bytes) -> Conversion:
    requires("convert", "sklearn", "skl2onnx")
    model = load_trusted(data, args.file.name)
    if not hasattr(model, "predict") or not hasattr(model, "n_features_in_"):
        raise InvalidModel(
            f"{args.file.name} holds a {type(model).__name__}, not a fitted scikit-learn "
            "model: export other frameworks' models to ONNX where they were trained"
        )
    x = sample_rows(model)
    with warnings.catch_warnings():
        # A model fitted on a DataFrame warns that plain rows have no column names: they are
        # the same columns, in order.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        try:
            onnx_bytes = to_onnx(model, x)
        except Exception as exc:  # skl2onnx raises many types for what it can't convert
            raise InvalidModel(f"skl2onnx can't convert {type(model).__name__}: {exc}") from None
        check = compare(model, onnx_bytes, x)
    names = getattr(model, "feature_names_in_", None)
    # The model's own column names, as it was fitted on a DataFrame: its CSV columns.
    features = tuple(str(n) for n in names) if names is not None else ()
    if len(features) != x.shape[1]:
        features = ()
    return Conversion(onnx_bytes, check, _provenance(model), type(model).__name__, features)


def _provenance(model: Any) -> dict[str, Any]:
    import onnx
    import skl2onnx
    import sklearn

    return {
        "framework": "scikit-learn",
        "estimator": type(model).__name__,
        "converter": {
            "skl2onnx": skl2onnx.__version__,
            "scikit-learn": sklearn.__version__,
            "onnx": onnx.__version__,
        },
    }
