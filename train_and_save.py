"""Train the y = 2x demo model (or import your own .onnx) into the BentoML model store.

    python train_and_save.py                      # fit, export, check, save; prints the tag
    python train_and_save.py --onnx my.onnx --name my-model
    python train_and_save.py --onnx clf.onnx --name clf --labels classes.txt
    python train_and_save.py --if-missing         # the demo model, only if the store has none
    python train_and_save.py optimize TAG --int8  # an optimized variant of a stored model
                                                  # (see: train_and_save.py optimize --help)
    python train_and_save.py convert model.pkl --trust --name NAME
                                                  # a scikit-learn pickle or joblib file, or
                                                  # a TorchScript archive (--input-shape)
                                                  # (see: train_and_save.py convert --help)

Models are saved in the project's store (./.bentoml), the one `make serve` and the image
use, unless BENTOML_HOME names another.

The same seed always gives a byte-identical ONNX file, and so the same SHA-256
and the same default version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serving.config import DEFAULT_MODEL_NAME
from onnx_serving.model import import_options as importing
from onnx_serving.model import store as model_store
from onnx_serving.model.signing import SigningError

TRUE_SLOPE, TRUE_INTERCEPT = 2.0, 0.0
FIT_TOLERANCE = 1e-6
OPSET = 17
IR_VERSION = 8  # understood by every ONNX Runtime since 1.10


class TrainingError(RuntimeError):
    pass


def generate_data(seed: int, samples: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """x uniform in [-100, 100], y = 2x plus tiny Gaussian noise, both float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-100.0, 100.0, size=samples)
    y = TRUE_SLOPE * x + TRUE_INTERCEPT + rng.normal(0.0, noise, size=samples)
    return x, y


def fit_least_squares(x: np.ndarray, y: np.ndarray, intercept: bool = True) -> tuple[float, float]:
    """Least-squares slope and intercept; with intercept=False the line through the origin."""
    design = np.column_stack([x, np.ones_like(x)]) if intercept else x[:, None]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(coef[0]), float(coef[1]) if intercept else 0.0


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - ss_res / ss_tot,
    }


def build_onnx(slope: float, intercept: float | None) -> bytes:
    """y = x * W (+ B) as an ONNX graph: x float32 [N, 1] with a dynamic batch dimension.

    Without an intercept the graph is a single elementwise Mul: with W = 2.0 that is
    exactly 2x in float32 for every x (zero's sign and subnormals included), which a
    MatMul + Add would not promise.
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "W"], ["xw" if intercept is not None else "y"])]
    initializer = [helper.make_tensor("W", TensorProto.FLOAT, [1], [slope])]
    if intercept is not None:
        nodes.append(helper.make_node("Add", ["xw", "B"], ["y"]))
        initializer.append(helper.make_tensor("B", TensorProto.FLOAT, [1], [intercept]))
    graph = helper.make_graph(
        nodes=nodes,
        name="linear_regression",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=initializer,
    )
    model = helper.make_model(
        graph,
        producer_name="train_and_save",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def exactness_probe() -> np.ndarray:
    """float32 values where "exactly 2x" is easy to get wrong: zeros of both signs,
    subnormals, tiny and huge magnitudes (up to half the float32 maximum), and random ones."""
    f32 = np.finfo(np.float32)
    special = [0.0, -0.0, f32.smallest_subnormal, -f32.smallest_subnormal, f32.smallest_normal]
    special += [1e-45, 1e-40, 1e-30, 1e-10, 0.5, 1.0, 3.0, 1e10, 1e30, float(f32.max) / 2]
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=4096, dtype=np.uint64).astype(np.uint32)
    random = bits.view(np.float32)
    random = random[np.isfinite(random) & (np.abs(random) <= f32.max / 2)]
    special_arr = np.array(special, dtype=np.float32)
    return np.concatenate([special_arr, -special_arr, random])


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX model on float32 x, [N] in and [N] out, as the service runs it."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.astype(np.float32).reshape(-1, 1)})
    return y.reshape(-1)


def check_runtime_matches_numpy(
    got: np.ndarray, slope: float, intercept: float | None, x: np.ndarray
) -> float:
    """Compare ONNX Runtime's predictions `got` for x with NumPy's; return the largest gap."""
    x32 = x.astype(np.float32)
    want = x32 * np.float32(slope)
    if intercept is not None:
        want = want + np.float32(intercept)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return float(np.max(np.abs(got - want)))


def is_exactly_2x(onnx_bytes: bytes) -> bool:
    """Does the exported model answer 2 * x, bit for bit, on the exactness probe?"""
    x = exactness_probe()
    return bool(np.array_equal(run_onnx(onnx_bytes, x).view(np.uint32), (2 * x).view(np.uint32)))


def train(
    seed: int, samples: int, noise: float, test_fraction: float, fit_intercept: bool = False
) -> dict[str, Any]:
    x, y = generate_data(seed, samples, noise)
    n_test = max(1, int(samples * test_fraction))
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    slope, intercept = fit_least_squares(x_train, y_train, intercept=fit_intercept)
    if abs(slope - TRUE_SLOPE) > FIT_TOLERANCE or abs(intercept - TRUE_INTERCEPT) > FIT_TOLERANCE:
        raise TrainingError(
            f"fit is off: slope {slope!r} (want {TRUE_SLOPE}), intercept {intercept!r} "
            f"(want {TRUE_INTERCEPT}), tolerance {FIT_TOLERANCE}; lower --noise or add --samples"
        )
    onnx_bytes = build_onnx(slope, intercept if fit_intercept else None)
    pred = run_onnx(onnx_bytes, x_test)
    max_diff = check_runtime_matches_numpy(
        pred, slope, intercept if fit_intercept else None, x_test
    )
    metrics = regression_metrics(y_test, pred.astype(np.float64))
    metrics["max_abs_diff_onnxruntime_vs_numpy"] = max_diff
    exact = is_exactly_2x(onnx_bytes)
    return {
        "onnx_bytes": onnx_bytes,
        "exact": exact,
        "metadata": {
            "source": "train_and_save.py",
            "params": {
                "slope": slope,
                "intercept": intercept,
                "fit": "slope and intercept" if fit_intercept else "slope only, through 0",
                # What the graph holds: the fitted float64 slope, rounded to float32.
                "slope_float32": float(np.float32(slope)),
            },
            # Checked on the exported file, not assumed: bit-for-bit 2 * x in float32.
            "exact_2x": exact,
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
        default=DEFAULT_MODEL_NAME,
        help="model name in the store (default: %(default)s)",
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
        help="import this .onnx file instead of training: any model ONNX Runtime runs on CPU "
        "(see the options for importing below)",
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
        "--fit-intercept",
        action="store_true",
        help="also fit an intercept (the default fits the slope only, so the model is exactly "
        "2x in float32; with an intercept it is approximate)",
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
        help=f"train the demo model only if the store has no {DEFAULT_MODEL_NAME} yet "
        "(used by `make serve`); it never imports and never uses another name",
    )
    parser.add_argument(
        "--sign-key",
        type=Path,
        metavar="PEM",
        help="sign the stored model with this EC private key (model-signing; `sign` later "
        "does the same for a stored model); the key is never stored",
    )
    importing.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["optimize"]:  # an optimized variant of a stored model (optimize.py)
        from onnx_serving.model import optimize

        return optimize.main(argv[1:])
    if argv[:1] in (["sign"], ["verify"]):  # signed models (model/signing.py)
        from onnx_serving.model import signing

        return signing.main(argv)
    if argv[:1] == ["convert"]:  # a scikit-learn pickle or TorchScript archive (convert/)
        from onnx_serving.model import convert

        return convert.main(argv[1:])
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

    if args.if_missing and (args.onnx is not None or args.name != DEFAULT_MODEL_NAME):
        parser.error(f"--if-missing only creates the demo model {DEFAULT_MODEL_NAME}")

    model_store.use_project_store()
    if args.if_missing and model_store.has_model(args.name):
        print(f"model store already has {args.name}; nothing to do", file=sys.stderr)
        return 0

    try:
        if args.onnx is not None:
            if not args.onnx.is_file():
                raise model_store.InvalidModel(f"{args.onnx}: no such file")
            options = importing.options_from(args)
            onnx_bytes, inlined = model_store.read_onnx_file(args.onnx)
            metadata: dict[str, Any] = {"source": "import", "imported_from": args.onnx.name}
            if inlined:
                metadata["external_data"] = "inlined into the stored file"
            labels = {"origin": "imported", **labels}
        else:
            options = None
            trained = train(
                args.seed, args.samples, args.noise, args.test_fraction, args.fit_intercept
            )
            onnx_bytes, metadata = trained["onnx_bytes"], trained["metadata"]
            if not trained["exact"]:
                params = metadata["params"]
                print(
                    f"note: the model is approximate, not exactly 2x in float32: y = "
                    f"{params['slope']!r} x + {params['intercept']!r}",
                    file=sys.stderr,
                )
            labels = {"origin": "train_and_save", "task": "regression", **labels}
        tag, note = model_store.save(onnx_bytes, args.name, args.version, labels, metadata, options)
        if note != "saved":
            print(note, file=sys.stderr)
        if args.sign_key is not None:
            from onnx_serving.model import signing

            print(signing.sign_stored(tag, args.sign_key, None, []), file=sys.stderr)
    except (model_store.InvalidModel, TrainingError, SigningError) as exc:
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
