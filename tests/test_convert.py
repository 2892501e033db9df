"""From the file a user has to a correct answer: a scikit-learn model saved with joblib (the
FastAPI tutorial's `model.pkl`) or a TorchScript archive, converted with
`train_and_save.py convert`, served, and answering as scikit-learn or PyTorch itself does."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import torch
from conftest import run_train, running
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LABELS = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def iris() -> tuple:
    frame, y = load_iris(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(frame, y)
    return model, frame


def test_a_pickle_is_converted_only_when_trusted_and_answers_as_scikit_learn(
    iris: tuple, tmp_path: Path
) -> None:
    model, frame = iris
    joblib.dump(model, tmp_path / "model.pkl")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    home = tmp_path / "home"

    untrusted = run_train(home, "convert", str(tmp_path / "model.pkl"), "--name", "iris")
    assert untrusted.returncode == 2 and "loading it runs code from it" in untrusted.stderr

    args = ["convert", str(tmp_path / "model.pkl"), "--trust", "--name", "iris"]
    result = run_train(home, *args, "--labels", str(tmp_path / "labels.txt"))
    assert result.returncode == 0, result.stderr
    assert "largest difference from scikit-learn on 256 rows" in result.stderr
    tag = result.stdout.strip()

    rows = frame.to_numpy(dtype=np.float32)
    with running(home, tmp_path / "serve.log", MODEL_NAME="iris", WORKERS="1") as server:
        meta = httpx.get(f"{server.url}/metadata").json()
        assert meta["tag"] == tag
        source = meta["metadata"]["converted_from"]
        assert source["estimator"] == "Pipeline" and source["check"]["labels_agree"] == 1.0
        assert set(source["converter"]) == {"skl2onnx", "scikit-learn", "onnx"}
        # The model's own column names, from the DataFrame it was fitted on.
        assert meta["signature"]["columns"] == list(frame.columns)

        answer = httpx.post(f"{server.url}/predict", json={"x": rows.tolist()}).json()
        assert answer["classes"] == LABELS
        probabilities = np.array(answer["outputs"]["probabilities"])
        np.testing.assert_allclose(probabilities, model.predict_proba(frame), atol=1e-5)
        assert answer["outputs"]["label"] == model.predict(frame).tolist()

        csv = frame.head(5).to_csv(index=False).encode()
        r = httpx.post(f"{server.url}/predict_file", files={"file": ("iris.csv", csv)})
        assert r.status_code == 200, r.text
        header = r.text.splitlines()[0].split(",")
        assert header[:4] == list(frame.columns) and "probabilities_setosa" in header


def test_a_compressed_joblib_regressor_is_converted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    model = Ridge().fit(x, x @ [1.0, -2.0, 0.5] + 3)
    joblib.dump(model, tmp_path / "ridge.joblib", compress=3)
    args = ["convert", str(tmp_path / "ridge.joblib"), "--trust", "--name", "ridge"]
    result = run_train(tmp_path / "home", *args)
    assert result.returncode == 0, result.stderr
    assert "converted Ridge" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda p: joblib.dump({"not": "a model"}, p), "holds a dict, not a fitted scikit-learn"),
        (lambda p: p.write_bytes(b"\x08\x08\x12\x04onnx"), "not a pickle, joblib file or Torch"),
        (
            lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00."),
            "could not be loaded",
        ),
    ],
    ids=["not-a-model", "not-a-pickle", "broken-pickle"],
)
def test_files_convert_can_t_take_are_refused_with_the_reason(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "thing.pkl"
    content(path)  # type: ignore[operator]
    result = run_train(tmp_path / "home", "convert", str(path), "--trust", "--name", "thing")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_convert_s_help_and_the_main_help_name_it() -> None:
    result = run_train(Path("/tmp/unused"), "--help")
    assert "convert model.pkl --trust --name NAME" in result.stdout
    result = run_train(Path("/tmp/unused"), "convert", "--help")
    assert "--trust" in result.stdout and "--labels" in result.stdout


# TorchScript archives: a CNN on images, a two-input token model, a model traced with a
# fixed batch size, and what can't be converted.


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).mean((2, 3)))


class Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = (self.embed(ids) * mask.unsqueeze(-1)).sum(1)
        return self.head(pooled), ids.sum(1)


class FixedBatch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).reshape(1, 4)  # traced: one row of 4, for good


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(module.eval()).save(str(path))
    return path


def test_a_torchscript_archive_is_converted_with_a_dynamic_batch_and_answers_as_pytorch(
    tmp_path: Path,
) -> None:
    model = Net()
    path = scripted(model, tmp_path / "net.pt")
    home = tmp_path / "home"
    args = ["convert", str(path), "--trust", "--name", "net", "--input-shape", "1,3,16,16"]
    result = run_train(home, *args)
    assert result.returncode == 0, result.stderr
    assert "converted TorchScript Net: largest difference from PyTorch on 3 rows" in result.stderr

    images = torch.from_numpy(np.random.default_rng(1).normal(size=(7, 3, 16, 16))).float()
    with torch.no_grad():
        want = torch.jit.load(str(path))(images).numpy()
    with running(home, tmp_path / "serve.log", MODEL_NAME="net", WORKERS="1") as server:
        meta = httpx.get(f"{server.url}/metadata").json()
        source = meta["metadata"]["converted_from"]
        assert source["format"] == "TorchScript" and source["check"]["batch"] == "dynamic"
        assert set(source["converter"]) == {"torch", "onnx"} and len(source["sha256"]) == 64
        (spec,) = meta["signature"]["inputs"]
        assert spec["name"] == "image" and spec["shape"] == ["batch", 3, 16, 16]
        # A batch of 7, which neither the export nor the check used, by the input's own name.
        answer = httpx.post(f"{server.url}/predict", json={"image": images.tolist()})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.array(answer.json()["y"]), want, atol=1e-5)


def test_a_two_input_token_model_keeps_its_argument_names_and_types(tmp_path: Path) -> None:
    path = scripted(Tokens(), tmp_path / "tokens.pt")
    home = tmp_path / "home"
    shape = ["--input-shape", "1,6"]
    args = ["convert", str(path), "--trust", "--name", "tokens", *shape, *shape]
    result = run_train(home, *args, "--input-dtype", "int64", "--input-dtype", "float32")
    assert result.returncode == 0, result.stderr

    import bentoml
    import onnxruntime as ort

    os.environ["BENTOML_HOME"] = str(home)
    try:
        stored = bentoml.models.get("tokens:latest")
        onnx_file = next(Path(stored.path).glob("*.onnx"))
    finally:
        os.environ.pop("BENTOML_HOME")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("ids", "tensor(int64)"),
        ("mask", "tensor(float)"),
    ]
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    # Ids across the whole vocabulary, not only the check's 0..9, and a batch of 5.
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, 100, size=(5, 6)))
    mask = torch.ones(5, 6)
    with torch.no_grad():
        logits, total = torch.jit.load(str(path))(ids, mask)
    got = session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
    np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-5)
    assert got[1].tolist() == total.tolist()


def test_a_model_traced_with_a_fixed_batch_is_exported_with_it_and_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fixed.pt"
    torch.jit.trace(FixedBatch(), torch.ones(1, 4)).save(str(path))
    args = ["convert", str(path), "--trust", "--name", "fixed", "--input-shape", "1,4"]
    result = run_train(tmp_path / "home", *args)
    assert result.returncode == 0, result.stderr
    assert "its batch size fixed at 1" in result.stderr


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        ([], 2, "doesn't record its inputs' shapes: give one --input-shape per input"),
        (["--input-shape", "1,4", "--input-shape", "1,4"], 2, "forward takes 1 input(s) (image)"),
        (["--input-shape", "1,3"], 1, "the model fails on inputs of shape (1, 3)"),
        (["--input-shape", "1,x"], 2, "want positive sizes separated by commas"),
        (["--input-shape", "1,3,22400,22400"], 2, "sample values, more than 134,217,728"),
    ],
    ids=["no-shape", "two-shapes-for-one-input", "wrong-rank", "not-a-shape", "too-large"],
)
def test_torchscript_without_the_right_shapes_is_refused_with_what_to_give(
    tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    path = scripted(Net(), tmp_path / "net.pt")
    result = run_train(tmp_path / "home", "convert", str(path), "--trust", "--name", "n", *extra)
    assert result.returncode == code and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


class Keyed(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": x}


class Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        return x * factor


@pytest.mark.parametrize(
    ("module", "trust", "code", "message"),
    [
        (Net(), False, 2, "net.pt is a TorchScript archive: loading it runs code from it"),
        (Keyed(), True, 1, "forward returns dict: ONNX outputs are tensors"),
        (Scaled(), True, 1, "forward takes arguments that are not tensors (factor: float)"),
    ],
    ids=["untrusted", "dict-output", "float-argument"],
)
def test_torchscript_convert_can_t_take_is_refused_with_the_reason(
    tmp_path: Path, module: torch.nn.Module, trust: bool, code: int, message: str
) -> None:
    path = scripted(module, tmp_path / "net.pt")
    args = ["convert", str(path), "--name", "n", "--input-shape", "1,4"]
    result = run_train(tmp_path / "home", *args, *(["--trust"] if trust else []))
    assert result.returncode == code and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_state_dict_is_refused_with_the_export_recipe(tmp_path: Path) -> None:
    torch.save(Net().state_dict(), tmp_path / "weights.pt")
    for args in (["convert", str(tmp_path / "weights.pt"), "--trust", "--name", "n"],
                 ["--onnx", str(tmp_path / "weights.pt"), "--name", "n"]):  # fmt: skip
        result = run_train(tmp_path / "home", *args)
        assert result.returncode == 1, result.stderr
        assert "a PyTorch checkpoint (torch.save)" in result.stderr
        assert "torch.onnx.export(model, (example,)" in result.stderr
