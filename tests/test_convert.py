"""From the file a user has to a correct answer: a scikit-learn model saved with joblib (the
FastAPI tutorial's `model.pkl`), converted with `train_and_save.py convert`, served, and
answering as scikit-learn itself does."""

from __future__ import annotations

from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
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
        (lambda p: p.write_bytes(b"\x08\x08\x12\x04onnx"), "not a pickle or joblib file"),
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
