"""`onnx_serving.offline.spark` on local Spark (`local[2]`): a million rows equal to the service's
to the last bit, the other models' outputs as /predict_file writes them, and the refusals
(a wrong SHA-256, a missing column, text that is not a number) with no partial output.

Java 17 comes from scripts/java.sh (Debian's openjdk-17-jre-headless, if not there yet).
One Spark session serves the in-process tests; the command itself runs twice.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_train
from fixture_models import MODELS

from onnx_serving.model.signature import Signature
from onnx_serving.protocols.files import predict_file

pytestmark = pytest.mark.spark
ROWS = 1_000_000
OTHER_MODELS = {"torch-two-inputs": "torch_two_inputs", "sklearn-logreg": "sklearn_logreg"}


@pytest.fixture(scope="session")
def java() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "java.sh")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def spark(java: None) -> Iterator[object]:
    from onnx_serving.offline import spark as spark_infer

    saved = {k: os.environ.get(k) for k in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON")}
    session = spark_infer.spark_session("local[2]", progress=False)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for key, value in saved.items():  # what spark_session set for its JVM, not for later tests
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def spark_infer_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    cmd = [sys.executable, "-m", "onnx_serving.offline.spark", "--master", "local[2]", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def shipped(home: Path, tag: str) -> object:
    """spark_infer.prepare(tag) against the store in `home` (BentoML reads its home once per
    process, so in one of its own)."""
    from onnx_serving.offline.spark import ShippedModel

    code = "import json, sys, dataclasses; from onnx_serving.offline.spark import prepare; "
    code += "print(json.dumps(dataclasses.asdict(prepare(sys.argv[1]))))"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run(
        [sys.executable, "-c", code, tag], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return ShippedModel(**json.loads(out.stdout.splitlines()[-1]))


def part_files(out: Path) -> bytes:
    """A CSV output directory as one file: the header once, the parts in order."""
    parts = sorted(out.glob("part-*.csv"))
    assert parts, f"no part files in {out}"
    head, *rest = [p.read_bytes() for p in parts]
    return head + b"".join(r.split(b"\n", 1)[1] for r in rest)


def assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_million_csv_rows_equal_the_service_to_the_last_bit(
    java: None, model_home: Path, server_url: str, tmp_path: Path
) -> None:
    import httpx

    x = np.random.default_rng(7).uniform(-1e4, 1e4, ROWS).astype(np.float32)
    src, out = tmp_path / "in.csv", tmp_path / "out"
    lines = (b"%d,%r,n%d\n" % (i, v, i) for i, v in enumerate(x.tolist()))
    src.write_bytes(b"id,x,note\n" + b"".join(lines))
    result = spark_infer_cli(model_home, "--input", str(src), "--output", str(out))
    assert result.returncode == 0, result.stderr
    with src.open("rb") as f:
        served = httpx.post(server_url + "/predict_file", files={"file": f}, timeout=300)
    assert served.status_code == 200, served.text
    got = part_files(out)
    assert got == served.content  # the same rows, in order, and the same predictions as text
    y = np.loadtxt(io.BytesIO(got), delimiter=",", skiprows=1, usecols=3, dtype=np.float32)
    np.testing.assert_array_equal(y.view(np.uint32), (2 * x).view(np.uint32))


def test_parquet_typed_predictions_match_the_service(
    spark: object, model_home: Path, server_url: str, tmp_path: Path
) -> None:
    import httpx
    import pandas as pd

    from onnx_serving.offline import spark as spark_infer

    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    table = spark.range(ROWS, numPartitions=2).selectExpr("id", "cast(sin(id) * 1000 as float) x")
    table.write.parquet(str(src))
    spark_infer.run(spark, shipped(model_home, "linear-2x"), str(src), str(out))
    # Spark reads the larger of the input's files first: rows keep their order within a file.
    rows = pd.read_parquet(out).sort_values("id")
    assert list(rows.columns) == ["id", "x", "y"]
    np.testing.assert_array_equal(rows["id"], np.arange(ROWS))  # every row, once
    assert str(rows["y"].dtype) == "float32"
    buf = io.BytesIO()
    np.save(buf, rows["x"].to_numpy(np.float32))
    served = httpx.post(server_url + "/predict_file", files={"file": ("x.npy", buf.getvalue())})
    assert served.status_code == 200, served.text
    want = np.load(io.BytesIO(served.content))
    np.testing.assert_array_equal(rows["y"].to_numpy().view(np.uint32), want.view(np.uint32))


@pytest.fixture(scope="module")
def other_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with models of several inputs and outputs (the fixtures' exporters' files)."""
    home = tmp_path_factory.mktemp("spark_models")
    for name, case in OTHER_MODELS.items():
        result = run_train(home, "--onnx", str(MODELS / f"{case}.onnx"), "--name", name)
        assert result.returncode == 0, result.stderr
    return home


@pytest.mark.parametrize("name", OTHER_MODELS)
def test_other_models_write_what_predict_file_writes(
    spark: object, other_home: Path, tmp_path: Path, name: str
) -> None:
    import onnxruntime as ort

    from onnx_serving.model.runner import LoadedModel, session_options
    from onnx_serving.offline import spark as spark_infer

    model = shipped(other_home, name)
    sig = Signature.from_metadata(model.signature)
    rng = np.random.default_rng(3)
    values = rng.standard_normal((5000, len(sig.columns))).round(5)
    src = tmp_path / "in.csv"
    text = "\n".join(f"{i}," + ",".join(map(str, row)) for i, row in enumerate(values.tolist()))
    src.write_text("id," + ",".join(sig.columns) + "\n" + text + "\n")
    spark_infer.run(spark, model, str(src), str(tmp_path / "out"))
    # What the service's /predict_file code writes for the same file, with the same file.
    session = ort.InferenceSession(model.path, session_options())
    run = LoadedModel(model.tag, session, sig, {}).run
    (tmp_path / "svc").mkdir()
    want = predict_file(src, tmp_path / "svc", sig, run, 1000)[0].read_bytes()
    assert part_files(tmp_path / "out") == want


def test_a_wrong_sha256_refuses_to_run(model_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(model_home / "models", home / "models", symlinks=False)
    (model_file,) = (home / "models" / "linear-2x").glob("*/model.onnx")
    model_file.write_bytes(model_file.read_bytes() + b"\0")  # not the file that was saved
    (tmp_path / "in.csv").write_text("x\n1\n")
    out = tmp_path / "out"
    result = spark_infer_cli(home, "--input", str(tmp_path / "in.csv"), "--output", str(out))
    assert result.returncode == 1
    assert "refusing to serve linear-2x" in result.stderr
    assert "but the model store recorded" in result.stderr
    assert_nothing_written(tmp_path, out)


def test_a_shipped_file_that_differs_is_refused_on_the_executors(
    spark: object, model_home: Path, tmp_path: Path
) -> None:
    from onnx_serving.offline import spark as spark_infer

    model = shipped(model_home, "linear-2x")
    forged = spark_infer.ShippedModel(model.tag, model.path, "0" * 64, model.signature)
    (tmp_path / "in.csv").write_text("x\n1\n2\n")
    out = tmp_path / "out"
    with pytest.raises(spark_infer.SparkJobError, match="refusing to run linear-2x"):
        spark_infer.run(spark, forged, str(tmp_path / "in.csv"), str(out))
    assert_nothing_written(tmp_path, out)


def test_a_missing_column_fails_clearly(spark: object, model_home: Path, tmp_path: Path) -> None:
    from onnx_serving.offline import spark as spark_infer

    (tmp_path / "in.csv").write_text("id,z\n1,2\n")
    out = tmp_path / "out"
    with pytest.raises(spark_infer.SparkJobError, match=r"has no \['x'\] column\(s\)"):
        spark_infer.run(spark, shipped(model_home, "linear-2x"), str(tmp_path / "in.csv"), str(out))
    assert_nothing_written(tmp_path, out)


def test_text_that_is_not_a_number_fails_clearly_with_no_partial_output(
    spark: object, model_home: Path, tmp_path: Path
) -> None:
    from onnx_serving.offline import spark as spark_infer

    src = tmp_path / "in"
    src.mkdir()  # two files, two tasks: the good one may finish, nothing of it must show
    (src / "a.csv").write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(50_000)))
    (src / "b.csv").write_text("id,x\n1,2\n2,abc\n3,4\n")
    out = tmp_path / "out"
    with pytest.raises(spark_infer.SparkJobError, match=r"^column x: 'abc' is not a number$"):
        spark_infer.run(spark, shipped(model_home, "linear-2x"), str(src), str(out))
    assert_nothing_written(tmp_path, out)


def test_the_batch_benchmark_prints_rows_per_second(
    java: None, model_home: Path, tmp_path: Path
) -> None:
    """`make bench-batch`'s harness end to end, on small files (not a performance test)."""
    env = {**os.environ, "BENTOML_HOME": str(model_home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch_scale", "--rows", "20000", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("batch-*.json")
    rates = json.loads(report.read_text())["rows_per_s"]
    paths = ["in-process ONNX Runtime", "/predict_file (1 upload)", "batch client"]
    paths += ["Spark local[2], Parquet", "Spark local[2], CSV", "Spark local[2], no output"]
    assert set(rates) == {*paths, "in-process CSV code"}
    assert all(rates[p]["20000"] > 0 for p in rates)
    for path in paths:
        assert path in result.stdout


def test_with_a_verify_key_only_a_signed_model_runs(
    java: None, model_home: Path, tmp_path: Path
) -> None:
    """MODEL_VERIFY_KEY: the driver verifies the signature before Spark starts, and the
    executors check the shipped file against the SHA-256 the signature lists."""
    from test_signing import ec_key

    home = tmp_path / "home"
    shutil.copytree(model_home / "models", home / "models", symlinks=False)
    private, public, _ = ec_key(tmp_path, "team")
    (tmp_path / "in.csv").write_text("x\n1\n2.5\n")
    out = tmp_path / "out"
    args = ("--input", str(tmp_path / "in.csv"), "--output", str(out))
    os.environ["MODEL_VERIFY_KEY"] = str(public)
    try:
        unsigned = spark_infer_cli(home, *args)
        signed = subprocess.run(
            [sys.executable, str(ROOT / "train_and_save.py"), "sign", "linear-2x:latest",
             "--key", str(private)],
            env={**os.environ, "BENTOML_HOME": str(home)}, capture_output=True, text=True,
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        ran = spark_infer_cli(home, *args)
    finally:
        del os.environ["MODEL_VERIFY_KEY"]
    assert unsigned.returncode == 1 and "it is not signed" in unsigned.stderr, unsigned.stderr
    assert ran.returncode == 0, ran.stderr
    assert part_files(out).decode().splitlines()[1:] == ["1,2", "2.5,5"]
