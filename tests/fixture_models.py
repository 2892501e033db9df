"""Fixtures for the models real exporters made (tests/fixtures/make_models.py).

Loaded as a plugin by conftest.py:

    fixture_home     session: a model store with every fixture model imported through
                     train_and_save.py --onnx, with its import options, named <case>
    fixture_servers  session: one `bentoml serve` per fixture model, started together
                     (they share the 2 cores better than one after another); name -> URL
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.local_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
CASES: dict[str, dict[str, Any]] = json.loads((MODELS / "cases.json").read_text())

# One process imports them all: a Python start and BentoML import per model would cost more.
IMPORT_ALL = """
import json, sys
import train_and_save
for name, args in json.loads(sys.argv[1]).items():
    assert train_and_save.main(args) == 0, name
"""


def model_name(case: str) -> str:
    return case.replace("_", "-")


@pytest.fixture(scope="session")
def fixture_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fixture_home")
    jobs = {
        name: ["--onnx", case["file"], "--name", model_name(name), *case.get("import_args", [])]
        for name, case in CASES.items()
    }
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(jobs)],
        cwd=MODELS,  # the cases' paths (models, labels files) are relative to it
        env={
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="session")
def fixture_servers(
    fixture_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    from conftest import BentoServer

    logs = tmp_path_factory.mktemp("fixture_logs")
    servers = {}
    try:
        for name in CASES:
            GRPC[name] = f"127.0.0.1:{free_port()}"
            servers[name] = BentoServer(
                fixture_home,
                logs / f"{name}.log",
                MODEL_NAME=model_name(name),
                GRPC_PORT=GRPC[name].rsplit(":", 1)[1],
            )
        for server in servers.values():
            server.wait_ready(timeout=180)
        yield {name: server.url for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


# Each fixture server's gRPC address (the Open Inference Protocol over gRPC).
GRPC: dict[str, str] = {}


@pytest.fixture(scope="session")
def fixture_grpc(fixture_servers: dict[str, str]) -> dict[str, str]:
    return GRPC


def expected(case: str, output: str) -> np.ndarray:
    return np.array(CASES[case]["outputs"][output])


def assert_output(got: Any, case: str, output: str) -> None:
    """Close for floats (the framework and ONNX Runtime round differently), equal otherwise."""
    want = expected(case, output)
    got = np.asarray(got)
    assert got.shape == want.shape or got.reshape(want.shape).shape == want.shape, (
        f"{case}.{output}: shape {got.shape}, want {want.shape}"
    )
    got = got.reshape(want.shape)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-4, atol=1e-5)
    else:
        assert got.tolist() == want.tolist(), f"{case}.{output}"
