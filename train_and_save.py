"""Train the y = 2x demo model (or import your own .onnx) into the BentoML model store.

    python train_and_save.py                      # fit, export, check, save; prints the tag
    python train_and_save.py --onnx my.onnx --name my-model
    python train_and_save.py --if-missing         # only if the store has no model of that name

The same seed always gives a byte-identical ONNX file, and so the same SHA-256
and the same default version.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serving import model_store
from onnx_serving.config import DEFAULT_MODEL_NAME

TRUE_SLOPE, TRUE_INTERCEPT = 2.0, 0.0
FIT_TOLERANCE = 1e-6
OPSET = 17
IR_VERSION = 8  # understood by every ONNX Runtime since 1.10


class TrainingError(RuntimeError):
    pass


def generate_data(seed: int, samples: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """x uniform in [-100, 100], y = 2x plus tiny Gaussian noise, both float64.

    The default noise is small enough that the fitted intercept (~1e-11) vanishes in
    float32, so the served model answers exactly 2x for ordinary inputs.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-100.0, 100.0, size=samples)
    y = TRUE_SLOPE * x + TRUE_INTERCEPT + rng.normal(0.0, noise, size=samples)
    return x, y


def fit_least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    design = np.column_stack([x, np.ones_like(x)])
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(slope), float(intercept)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - ss_res / ss_tot,
    }


def build_onnx(slope: float, intercept: float) -> bytes:
    """y = x @ W + B as an ONNX graph: x float32 [N, 1] with a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("W", TensorProto.FLOAT, [1, 1], [slope])
    bias = helper.make_tensor("B", TensorProto.FLOAT, [1], [intercept])
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
        ],
        name="linear_regression",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[weight, bias],
    )
    model = helper.make_model(
        graph,
        producer_name="train_and_save",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def check_runtime_matches_numpy(
    onnx_bytes: bytes, slope: float, intercept: float, x: np.ndarray
) -> float:
    """Run held-out x through ONNX Runtime and NumPy; return the largest difference."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x32 = x.astype(np.float32).reshape(-1, 1)
    (got,) = session.run(None, {"x": x32})
    want = x32 @ np.array([[slope]], dtype=np.float32) + np.float32(intercept)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return float(np.max(np.abs(got - want)))


def train(seed: int, samples: int, noise: float, test_fraction: float) -> dict[str, Any]:
    x, y = generate_data(seed, samples, noise)
    n_test = max(1, int(samples * test_fraction))
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    slope, intercept = fit_least_squares(x_train, y_train)
    if abs(slope - TRUE_SLOPE) > FIT_TOLERANCE or abs(intercept - TRUE_INTERCEPT) > FIT_TOLERANCE:
        raise TrainingError(
            f"fit is off: slope {slope!r} (want {TRUE_SLOPE}), intercept {intercept!r} "
            f"(want {TRUE_INTERCEPT}), tolerance {FIT_TOLERANCE}; lower --noise or add --samples"
        )
    onnx_bytes = build_onnx(slope, intercept)
    max_diff = check_runtime_matches_numpy(onnx_bytes, slope, intercept, x_test)
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (pred,) = session.run(None, {"x": x_test.astype(np.float32).reshape(-1, 1)})
    metrics = regression_metrics(y_test, pred.reshape(-1).astype(np.float64))
    metrics["max_abs_diff_onnxruntime_vs_numpy"] = max_diff
    return {
        "onnx_bytes": onnx_bytes,
        "metadata": {
            "source": "train_and_save.py",
            "params": {"slope": slope, "intercept": intercept},
            "metrics": metrics,
            "training": {
                "seed": seed,
                "samples": samples,
                "train_samples": len(x_train),
                "test_samples": n_test,
                "noise_std": noise,
            },
        },
    }


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--label wants KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("MODEL_NAME") or DEFAULT_MODEL_NAME,
        help="model name in the store (default: $MODEL_NAME or %(default)s)",
    )
    parser.add_argument(
        "--version",
        help="model version (default: sha256-<first 16 hex digits of the ONNX file's SHA-256>, "
        "so the same file always gets the same tag)",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        metavar="PATH",
        help="import this .onnx file instead of training; it must take one float32 tensor "
        "[rows] or [rows, features]",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--samples", type=int, default=10_000, help="generated samples (default: %(default)s)"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=1e-9,
        help="std of the Gaussian noise added to y (default: %(default)s)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of samples held out for metrics and the runtime check (default: %(default)s)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra label for the stored model; repeatable",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="PATH",
        help="also write the ONNX file here (to compare hashes, or to serve elsewhere)",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing if the store already holds a model of this name (used by `make serve`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples < 10:
        parser.error("--samples must be at least 10")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error("--test-fraction must be between 0 and 1")
    if args.noise < 0:
        parser.error("--noise must be >= 0")
    try:
        labels = parse_labels(args.label)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    if args.if_missing and model_store.has_model(args.name):
        print(f"model store already has {args.name}; nothing to do", file=sys.stderr)
        return 0

    try:
        if args.onnx is not None:
            if not args.onnx.is_file():
                raise model_store.InvalidModel(f"{args.onnx}: no such file")
            onnx_bytes = args.onnx.read_bytes()
            metadata: dict[str, Any] = {"source": "import", "imported_from": args.onnx.name}
            labels = {"origin": "imported", **labels}
        else:
            trained = train(args.seed, args.samples, args.noise, args.test_fraction)
            onnx_bytes, metadata = trained["onnx_bytes"], trained["metadata"]
            labels = {"origin": "train_and_save", "task": "regression", **labels}
        tag = model_store.save(onnx_bytes, args.name, args.version, labels, metadata)
    except (model_store.InvalidModel, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # bentoml rejects bad names/versions with its own exception types.
        if type(exc).__module__.startswith("bentoml"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    if args.export is not None:
        args.export.write_bytes(onnx_bytes)
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
