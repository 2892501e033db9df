"""The load tests, run for real: Locust against a live `bentoml serve` and the Docker image.

`server_url` (tests/conftest.py) and `image_url` (tests/image_support.py) are session fixtures
that yield "http://127.0.0.1:PORT" of a running service.

Each run goes through load_tests/run.sh, the script behind `make load-test`, with short run
times so the whole file stays well under a minute and a half.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import run_train, running

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = ROOT / "load_tests" / "run.sh"
REPORT_FILES = (
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
    "report.html",
    "throughput.png",
    "latency.png",
    "targets.txt",
)
# The default of run.sh, spelled out: the realistic mix of every endpoint.
USERS = "MixedUser"
# Targets for runs in the test suite: loose enough for a noisy shared 2-core machine where other
# jobs run at the same time (about 3x the defaults for p95/p99, which hold on a quiet machine),
# tight enough to catch a broken or badly slowed service: every answer must be right, and most
# of the 100 req/s offered (10 users x 10 req/s) must get through.
CI_TARGETS = {
    "LOCUST_MAX_FAIL_RATIO": "0",
    "LOCUST_P95_MS": "250",
    "LOCUST_P99_MS": "500",
    "LOCUST_MIN_RPS": "70",
}


def run_load_test(
    mode: str, url: str, report_dir: Path, run_time: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """load_tests/run.sh against `url`; returns the finished process (output in .stdout)."""
    full_env = {
        **os.environ,
        "HOST": url,
        "RUN_TIME": run_time,
        "REPORT_DIR": str(report_dir),
        "LOCUST_USER_CLASSES": USERS,
        **env,
    }
    return subprocess.run(
        ["bash", str(RUN_SH), mode],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def assert_reports(report_dir: Path) -> None:
    missing = [name for name in REPORT_FILES if not (report_dir / name).is_file()]
    assert not missing, f"missing reports in {report_dir}: {missing}"
    assert (report_dir / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = (report_dir / "locust_stats_history.csv").read_text()
    assert "Aggregated" in history and "/predict" in history  # full history, per endpoint


def test_the_grpc_user_loads_the_same_targets(
    server_url: str, grpc_address: str, tmp_path: Path
) -> None:
    """GrpcUser: the Open Inference Protocol over gRPC, every answer checked, judged by the
    same targets as the HTTP users."""
    env = {**CI_TARGETS, "LOCUST_USER_CLASSES": "GrpcUser", "GRPC_TARGET": grpc_address}
    result = run_load_test("serve", server_url, tmp_path, "8s", **env)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "RESULT: PASS" in result.stdout
    stats = (tmp_path / "locust_stats.csv").read_text().splitlines()
    row = next(line.split(",") for line in stats if line.startswith("gRPC,ModelInfer,"))
    assert int(row[2]) > 300 and int(row[3]) == 0, row  # requests, failures


def test_load_test_passes(server_url: str, tmp_path: Path) -> None:
    result = run_load_test("serve", server_url, tmp_path, "8s", **CI_TARGETS)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "RESULT: PASS" in result.stdout
    assert "PASS  failure ratio" in result.stdout
    assert_reports(tmp_path)


def test_missed_target_fails_the_run(server_url: str, tmp_path: Path) -> None:
    targets = {**CI_TARGETS, "LOCUST_P95_MS": "0.01"}
    result = run_load_test("serve", server_url, tmp_path, "6s", **targets)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "FAIL  p95 response time" in result.stdout
    assert "RESULT: FAIL" in result.stdout
    assert "FAIL" in (tmp_path / "targets.txt").read_text()


@pytest.mark.image
def test_image_meets_ci_targets(image_url: str, tmp_path: Path) -> None:
    result = run_load_test(
        "image",
        image_url,
        tmp_path,
        "20s",
        **CI_TARGETS,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "RESULT: PASS" in result.stdout
    assert_reports(tmp_path)


# Overload, short, against a server with its default settings: OverloadUsers several times
# past capacity must be shed (503 + Retry-After + JSON, nothing else failing) and the calm load
# served again within 5 s. Latency is bounded at 3x the full run's targets: an 8 s run on a
# shared machine has seconds when the machine itself is slow (here, 1 run in 5 passed 100 ms);
# the targets themselves are measured by the full run, SHAPE=overload make load-test (README,
# Operating it), and the guard they were missed with before refused at p99 221-258 ms.
OVERLOAD_CI = {
    "SHAPE": "overload",
    "LOCUST_OVERLOAD_USERS": "256",
    "LOCUST_OVERLOAD_SECONDS": "8",
    "LOCUST_CALM_SECONDS": "6",
    "LOCUST_P99_MS": "300",
    "LOCUST_REFUSED_P99_MS": "150",
    "LOCUST_RECOVERY_S": "5",
}


def costly_double(path: Path, layers: int = 128, width: int = 256) -> None:
    """y = 2x, exactly, through `layers` products with a `width` x `width` identity (about
    0.3 ms a call on one core): one Locust process can offer several times what one worker
    answers of it. It can't any more with the demo (2,736 answers a second within the SLA in a
    run of 2026-12-05, nothing to shed), whose requests cost the worker less than Locust."""
    from onnx import TensorProto, helper, numpy_helper, save

    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye")
    reps = numpy_helper.from_array(np.array([1, width], dtype=np.int64), "reps")
    nodes = [helper.make_node("Tile", ["x", "reps"], ["t0"])]
    nodes += [helper.make_node("MatMul", [f"t{i}", "eye"], [f"t{i + 1}"]) for i in range(layers)]
    nodes += [
        helper.make_node("Slice", [f"t{layers}", "zero", "one", "one"], ["first"]),
        helper.make_node("Mul", ["first", "two"], ["y"]),
    ]
    consts = [
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "costly_double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1])],
        [eye, reps, *consts],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def shedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bentoml serve` with the default overload settings, one worker, serving a costlier
    y = 2x (costly_double), which one Locust process overloads several times."""
    home = tmp_path_factory.mktemp("overload")
    costly_double(home / "costly.onnx")
    made = run_train(home, "--onnx", str(home / "costly.onnx"), "--name", "costly-2x")
    assert made.returncode == 0, made.stdout + made.stderr
    with running(home, home / "serve.log", WORKERS="1", MODEL_NAME="costly-2x") as server:
        yield server.url


def missed_only_latency(stdout: str) -> bool:
    missed = [line for line in stdout.splitlines() if line.strip().startswith("FAIL ")]
    return bool(missed) and all("p99" in line for line in missed)


def test_overload_is_shed_and_recovers(shedding_server: str, tmp_path: Path) -> None:
    env = {**OVERLOAD_CI, "LOCUST_USER_CLASSES": "OverloadUser"}
    result = run_load_test("serve", shedding_server, tmp_path / "1", "40s", **env)
    if result.returncode != 0 and missed_only_latency(result.stdout):
        # A stall of the shared machine (seen in CI: every request in flight, admitted and
        # refused alike, held 200-300 ms) misses a latency target in an 8 s run on its own;
        # a slow service misses it twice. Anything else (no shedding, a failed request, no
        # recovery) fails at once.
        print(next(line for line in result.stdout.splitlines() if "overload (" in line))
        result = run_load_test("serve", shedding_server, tmp_path / "2", "40s", **env)
    assert result.returncode == 0, result.stdout[-4000:]
    print(next(line for line in result.stdout.splitlines() if "overload (" in line))
