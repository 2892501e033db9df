"""`benchmarks/run.sh --smoke`: the benchmark harness runs end to end.

Not a performance test: it checks that the harness starts and stops its servers,
prints the table with every column and writes a well-formed JSON report. The
numbers are judged from `make bench` on a quiet machine, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], model_home: Path) -> str:
    """A benchmark command against the test run's model store: what it printed."""
    env = {**os.environ, "BENTOML_HOME": str(model_home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_bench_smoke(model_home: Path, tmp_path: Path) -> None:
    out = run(["bash", "benchmarks/run.sh", "--smoke", "--out", str(tmp_path)], model_home)

    # The table: its header, one row per kind of case, and the targets' footer.
    for column in ("req/s", "rows/s", "p50 ms", "p99 ms", "503", "err", "srv%", "gen%", "xlimit"):
        assert column in out
    for case in ("== linear-2x", "in-process ms per call", "baseline FastAPI", "/predict_batched"):
        assert case in out
    assert "/predict_file" in out and "Targets" in out
    assert "PASS" in out or "MISS" in out

    # The JSON report: real requests were answered, and both sides' CPU was measured.
    reports = list(tmp_path.glob("bench-*-smoke.json"))
    assert len(reports) == 1, out
    report = json.loads(reports[0].read_text())
    assert report["meta"]["smoke"] is True
    assert set(report["limits"]["linear-2x"]["costs"]) == {"1", "8", "64", "256"}
    assert report["batching"]["linear-2x"]["max_batch_size"] >= 16
    rows = {(r["case"], r["tool"], r["conns"]): r for r in report["rows"]}
    for key in [
        ("baseline FastAPI", "wrk", 1),
        ("/predict", "wrk", 1),
        ("/predict", "python", 1),
        ("/predict_batched", "wrk", 1),
        ("/predict_batched", "python", 1),
    ]:
        row = rows[key]
        assert row["requests"] > 0 and row["rows_per_s"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["errors"] == 0 and row["refused"] == 0, row
        assert row["server_cpu"] > 0 and row["loadgen_cpu"] > 0, row
        assert row["x_limit"] is not None, row
    assert rows[("/predict", "wrk", 1)]["x_baseline"] is not None
    # The service against the baseline in alternating rounds (one round in a smoke run),
    # judged by its target.
    (ratio,) = report["paired"]["linear-2x"]
    assert ratio > 0
    judged = [t for t in report["targets"] if "alternating rounds" in t["target"]]
    assert [t["status"] for t in judged] in (["PASS"], ["MISS"]), report["targets"]
    (file_row,) = [r for r in report["rows"] if r["case"].startswith("/predict_file")]
    assert (
        file_row["errors"] == 0 and file_row["extra"]["rows_returned"] == file_row["extra"]["rows"]
    )
    assert {t["status"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}
    assert report["targets"], report


def test_the_profile_runs_and_splits_every_request_s_cpu(model_home: Path, tmp_path: Path) -> None:
    """`make bench-profile`'s tool, one second per server: both servers profiled, their
    layers' shares adding up to the whole, the model's own layer among them."""
    cmd = [".venv/bin/python", "-m", "benchmarks.profile", "--models", "linear-2x"]
    out = run([*cmd, "--duration", "1", "--out", str(tmp_path)], model_home)
    # Layers with no samples on either side are left out; the model runs on both.
    assert "(service/baseline" in out and "model: ONNX Runtime" in out
    (path,) = tmp_path.glob("profile-*.json")
    report = json.loads(path.read_text())["linear-2x"]
    for side in ("service", "baseline"):
        measured = report[side]
        assert measured["req_s"] > 0 and measured["cpu_us_per_request"] > 0, measured
        shares = [layer["share"] for layer in measured["layers"].values()]
        assert abs(sum(shares) - 1) < 1e-6, measured
    assert "model: ONNX Runtime" in report["service"]["layers"]
    assert (tmp_path / "linear-2x-service.raw").stat().st_size > 0


def test_a_missed_ratio_is_explained_layer_by_layer() -> None:
    from benchmarks.targets import layer_by_layer

    said = layer_by_layer(
        {"codec": (30.0, 0.0), "routing": (10.0, 70.0), "model": (12.0, 14.0), "loop": (20.0, 8.0)}
    )
    assert said.startswith("cause, µs of CPU per request, service vs baseline: 72 vs 92 in all")
    assert "more: codec 30 vs 0, loop 20 vs 8;" in said and "less: routing 10 vs 70" in said
    assert "model" not in said  # within 5 µs: not a cause
