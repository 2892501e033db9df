"""Training, export, reproducibility and import of user models."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, run_train
from onnx import TensorProto, helper

import train_and_save as tas


def test_fit_recovers_slope_and_intercept() -> None:
    x, y = tas.generate_data(seed=42, samples=10_000, noise=1e-6)
    slope, intercept = tas.fit_least_squares(x, y)
    assert abs(slope - 2.0) < 1e-6
    assert abs(intercept) < 1e-6
    slope_only, zero = tas.fit_least_squares(x, y, intercept=False)
    assert abs(slope_only - 2.0) < 1e-6 and zero == 0.0


def test_default_model_is_exactly_2x_and_records_how_it_was_fitted() -> None:
    trained = tas.train(seed=42, samples=10_000, noise=1e-9, test_fraction=0.2)
    meta = trained["metadata"]
    assert trained["exact"] and meta["exact_2x"] is True
    assert meta["params"]["fit"] == "slope only, through 0"
    assert meta["params"]["slope_float32"] == 2.0 and meta["params"]["intercept"] == 0.0
    # The fitted float64 slope is kept honestly; only its float32 rounding is exactly 2.
    assert meta["params"]["slope"] != 2.0 and abs(meta["params"]["slope"] - 2.0) < 1e-9
    x = tas.exactness_probe()
    y = tas.run_onnx(trained["onnx_bytes"], x)
    assert np.array_equal(y.view(np.uint32), (2 * x).view(np.uint32))  # bit for bit, ±0 too


def test_an_intercept_makes_the_model_approximate_and_says_so(tmp_path: Path) -> None:
    trained = tas.train(seed=42, samples=10_000, noise=1e-9, test_fraction=0.2, fit_intercept=True)
    assert trained["metadata"]["exact_2x"] is False
    assert trained["metadata"]["params"]["fit"] == "slope and intercept"
    result = run_train(tmp_path / "home", "--fit-intercept")
    assert result.returncode == 0, result.stderr
    assert "note: the model is approximate, not exactly 2x in float32" in result.stderr


def test_metrics_are_those_of_a_near_perfect_fit() -> None:
    trained = tas.train(seed=42, samples=10_000, noise=1e-6, test_fraction=0.2)
    metrics = trained["metadata"]["metrics"]
    assert metrics["mae"] < 1e-4
    assert metrics["rmse"] < 1e-4
    assert metrics["r2"] > 0.999999
    assert metrics["max_abs_diff_onnxruntime_vs_numpy"] < 1e-4


def test_fit_check_refuses_a_poor_fit() -> None:
    with pytest.raises(tas.TrainingError, match="fit is off"):
        tas.train(seed=1, samples=100, noise=1.0, test_fraction=0.2)


def test_onnx_graph_is_valid_and_computes_2x() -> None:
    onnx_bytes = tas.build_onnx(2.0, 0.0)
    model = onnx.load_model_from_string(onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "x"
    assert inp.type.tensor_type.elem_type == TensorProto.FLOAT
    assert dims[0].dim_param == "N" and dims[1].dim_value == 1
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = np.array([[1.0], [2.0], [3.5], [-4.25]], dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, 2 * x)


def test_same_seed_gives_byte_identical_onnx() -> None:
    a = tas.train(seed=7, samples=5_000, noise=1e-7, test_fraction=0.2)["onnx_bytes"]
    b = tas.train(seed=7, samples=5_000, noise=1e-7, test_fraction=0.2)["onnx_bytes"]
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()


def test_cli_saves_with_metadata_and_is_reproducible(tmp_path: Path) -> None:
    first = run_train(tmp_path / "a", "--export", str(tmp_path / "a.onnx"))
    second = run_train(tmp_path / "b", "--export", str(tmp_path / "b.onnx"))
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip()
    assert tag == second.stdout.strip()  # same seed -> same file -> same tag
    sha = hashlib.sha256((tmp_path / "a.onnx").read_bytes()).hexdigest()
    assert sha == hashlib.sha256((tmp_path / "b.onnx").read_bytes()).hexdigest()
    assert tag == f"linear-2x:sha256-{sha[:16]}"

    info = json.loads(
        subprocess.run(
            [str(Path(sys.executable).parent / "bentoml"), "models", "get", tag, "-o", "json"],
            env={"BENTOML_HOME": str(tmp_path / "a"), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    meta = info["metadata"]
    assert meta["sha256"] == sha
    assert meta["signature"]["inputs"] == [
        {"name": "x", "dtype": "tensor(float)", "shape": ["N", 1]}
    ]
    assert meta["signature"]["outputs"][0]["name"] == "y"
    assert meta["signature"]["opset"] == tas.OPSET
    assert meta["signature"]["ir_version"] == tas.IR_VERSION
    assert abs(meta["params"]["slope"] - 2.0) < 1e-6
    assert set(meta["metrics"]) >= {"mae", "rmse", "r2"}
    assert meta["training"]["seed"] == 42 and meta["training"]["samples"] == 10_000
    assert set(meta["libraries"]) >= {"bentoml", "onnx", "onnxruntime", "numpy"}
    assert info["labels"]["origin"] == "train_and_save"

    again = run_train(tmp_path / "a")  # same content again: a no-op, same tag
    assert again.returncode == 0 and again.stdout.strip() == tag
    skipped = run_train(tmp_path / "a", "--if-missing", "--seed", "9")
    assert skipped.returncode == 0 and "nothing to do" in skipped.stderr


def _model(
    inputs: list, outputs: list, nodes: list, initializer: list | None = None, opsets: list = ()
) -> bytes:
    graph = helper.make_graph(nodes, "user_model", inputs, outputs, initializer)
    opset_imports = [helper.make_opsetid("", 17), *opsets]
    model = helper.make_model(graph, opset_imports=opset_imports, ir_version=8)
    return model.SerializeToString()


def two_feature_model() -> bytes:
    """y = x0 + x1: a user's model with two features."""
    return _model(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        [
            helper.make_node(
                "ReduceSum", ["features"], ["total"], keepdims=1, noop_with_empty_axes=0
            )
        ],
    )


def test_import_of_a_user_model_records_its_signature(tmp_path: Path) -> None:
    path = tmp_path / "sum.onnx"
    path.write_bytes(two_feature_model())
    result = run_train(tmp_path / "home", "--onnx", str(path), "--name", "summer")
    assert result.returncode == 0, result.stderr
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.stdout.strip() == f"summer:sha256-{sha[:16]}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"this is not onnx", "not a valid ONNX model"),
        (
            _model(
                [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, ["N", 1])],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 1])],
                [helper.make_node("Cast", ["a"], ["c"], to=TensorProto.FLOAT)],
            ),
            "input 'a' is tensor(bfloat16): supported are",
        ),
        (
            _model(
                [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1])],
                [helper.make_tensor_sequence_value_info("c", TensorProto.FLOAT, None)],
                [helper.make_node("SequenceConstruct", ["a", "a"], ["c"])],
            ),
            "output 'c' is seq(tensor(float)): only tensors",
        ),
        (
            _model(
                [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
                [helper.make_node("Reshape", ["a", "shape"], ["c"])],
                [helper.make_tensor("shape", TensorProto.INT64, [1], [3])],
            ),
            "loads, but fails on the smallest input it declares ({'a': [1, 2]})",
        ),
        (
            _model(
                [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1])],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 1])],
                [helper.make_node("Frobnicate", ["a"], ["c"], domain="com.example")],
                opsets=[helper.make_opsetid("com.example", 1)],
            ),
            "ONNX Runtime cannot load the model",
        ),
    ],
    ids=["missing", "not-onnx", "bfloat16-input", "sequence-output", "fails-to-run", "unknown-op"],
)
def test_import_refuses_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    result = run_train(tmp_path / "home", "--onnx", str(path), "--name", "bad")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--samples", "abc"], ["--test-fraction", "2"], ["--label", "novalue"], ["--bogus"]],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, args: list[str]) -> None:
    result = run_train(tmp_path / "home", *args)
    assert result.returncode == 2
    assert "error:" in result.stderr


def test_help_explains_every_option() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_and_save.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for action in tas.build_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout
        assert action.help, f"{action.option_strings} has no help text"


# --- the file the user has, and imports that never lie ------------------------------------------


def _zip(names: list[str]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            z.writestr(name, b"\x80\x02}q\x00.")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x04\x95\x10\x00\x00\x00", "is a Python pickle (what pickle.dump, joblib.dump"),
        (b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.", "is a Python pickle"),  # old torch.save
        (b"x\x9c" + b"\x00" * 20, "compressed (what joblib.dump(..., compress=...) writes)"),
        (_zip(["model/data.pkl", "model/version"]), "a PyTorch checkpoint (torch.save)"),
        (
            _zip(["m/code/__torch__.py", "m/constants.pkl", "m/data.pkl"]),
            "a TorchScript archive (torch.jit.save), not ONNX. One you trust converts in one "
            "command: `python train_and_save.py convert FILE --trust --name NAME --input-shape",
        ),
    ],
    ids=["pickle", "old-torch-save", "joblib-compressed", "torch-checkpoint", "torchscript"],
)
def test_files_that_are_not_onnx_are_named_with_what_to_do(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(content)
    result = run_train(tmp_path / "home", "--onnx", str(path), "--name", "mine")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    # What to do: the export recipe, or the one command that converts the file.
    assert "torch.onnx.export" in result.stderr or "train_and_save.py convert" in result.stderr
    assert "Traceback" not in result.stderr


def classifier_model(classes: int) -> bytes:
    """Scores for `classes` classes: a user's classifier without labels of its own."""
    return _model(
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        [helper.make_node("MatMul", ["features", "w"], ["scores"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, classes], [0.5] * (2 * classes))],
    )


def test_a_reimport_with_other_options_is_a_new_version_and_never_a_silent_no_op(
    tmp_path: Path,
) -> None:
    path, home, labels = tmp_path / "clf.onnx", tmp_path / "home", tmp_path / "labels.txt"
    path.write_bytes(classifier_model(3))
    labels.write_text("cat\ndog\nfox\n")

    def imported(*args: str) -> subprocess.CompletedProcess[str]:
        return run_train(home, "--onnx", str(path), "--name", "clf", *args)

    first = imported()
    assert first.returncode == 0 and "unchanged" not in first.stderr
    same = imported()
    assert same.stdout == first.stdout and "unchanged: " in same.stderr
    labelled = imported("--labels", str(labels))
    assert labelled.returncode == 0, labelled.stderr
    assert labelled.stdout.strip().startswith(first.stdout.strip() + "-")  # a version of its own
    assert "saved as a new version" in labelled.stderr
    again = imported("--labels", str(labels))
    assert again.stdout == labelled.stdout and "unchanged: " in again.stderr
    pinned = imported("--version", first.stdout.strip().split(":")[1], "--allow-nan")
    assert pinned.returncode == 1
    assert "already holds this file with other import options (--allow-nan)" in pinned.stderr


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        (
            classifier_model(1000),
            ["--labels", "ten.txt"],
            "--labels lists 10 label(s), the model scores 1000 classes",
        ),
        (two_feature_model(), ["--features", "a,b,c"], "--features names 3 distinct column(s)"),
    ],
    ids=["labels-vs-classes", "features-vs-width"],
)
def test_import_options_are_held_to_the_model(
    tmp_path: Path, model: bytes, args: list[str], message: str
) -> None:
    (tmp_path / "ten.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    result = run_train(tmp_path / "home", "--onnx", str(path), "--name", "m", *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_image_size_is_held_to_a_static_input(tmp_path: Path) -> None:
    model = ROOT / "tests" / "fixtures" / "models" / "torch_cnn.onnx"
    args = ["--onnx", str(model), "--name", "cnn", "--image-size", "256,256"]
    result = run_train(tmp_path / "home", *args)
    assert result.returncode == 1
    assert "--image-size 256,256: input 'input' takes" in result.stderr


@pytest.mark.parametrize("case", ["sklearn_logreg_zipmap", "sklearn_logreg"])
def test_labels_name_a_classifier_s_own_classes(tmp_path: Path, case: str) -> None:
    """skl2onnx's iris classifier has the classes 0, 1, 2: --labels names them (the ZipMap is
    still read by its own keys); a wrong count is refused."""
    from onnx_serving.model import store as model_store
    from onnx_serving.model.import_options import ImportOptions

    model = (ROOT / "tests" / "fixtures" / "models" / f"{case}.onnx").read_bytes()
    sig = model_store.inspect(model, ImportOptions(labels=("setosa", "versicolor", "virginica")))
    assert sig.classes == ("setosa", "versicolor", "virginica")
    with pytest.raises(model_store.InvalidModel, match=r"2 label.*3 classes"):
        model_store.inspect(model, ImportOptions(labels=("setosa", "versicolor")))
