"""Shared fixtures: a private model store and a real `bentoml serve` on a free port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.local_server import ServerProcess, free_port

# Image fixtures (docker_engine, built_image, image_url) and the exporters' models
# (fixture_home, fixture_servers) live beside this file.
pytest_plugins = ["image_support", "fixture_models", "version_models", "manifests", "token_models"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The largest request the test server takes; the load tests send 100,000 values.
TEST_MAX_VALUES = 150_000
TEST_BATCH_MAX_SIZE = 2_000


def run_train(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run train_and_save.py against the model store in `home`."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train_and_save.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Tests in three tiers, one marker each (pytest -m unit|service|system):
#   unit     tests/unit/, mirroring the package: in-process, no server; the edit-test loop
#            (`make test-fast`, under a minute);
#   service  against a real `bentoml serve` on loopback (the default);
#   system   the Docker image, two replicas behind HAProxy, Spark.
UNIT = ROOT / "tests" / "unit"
SYSTEM_FILES = {"test_image.py", "test_spark.py", "test_replicas.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if name in SYSTEM_FILES or item.get_closest_marker("image"):
            item.add_marker(pytest.mark.system)
        elif item.get_closest_marker("service") is None and item.path.is_relative_to(UNIT):
            item.add_marker(pytest.mark.unit)
        elif item.get_closest_marker("service") is None:
            item.add_marker(pytest.mark.service)


class BentoServer(ServerProcess):
    """`bentoml serve` of this project's service on a free loopback port, serving the models
    of the store in `home`.

    Each server gets a BentoML home of its own around those models: `bentoml serve` empties
    $BENTOML_HOME/prometheus_multiproc_dir when it starts, which would wipe the /metrics of
    any other server running from the same home. `port`: a given one (a restart in place).
    """

    def __init__(self, home: Path, log: Path, port: int | None = None, **env: str) -> None:
        port = port or free_port()
        own_home = log.parent / f"bentoml-home-{port}"
        own_home.mkdir(parents=True)
        (own_home / "models").symlink_to((home / "models").resolve())
        cmd = [str(BIN / "bentoml"), "serve", "service:OnnxServing"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        env = {"BENTOML_HOME": str(own_home), "BENTOML_DO_NOT_TRACK": "true", **env}
        super().__init__("bentoml serve", cmd, port, env, log, ROOT)


MIB = 1 << 20


class PeakRss:
    """The workers' largest resident memory while the block runs, sampled every 2 ms."""

    def __init__(self, server: BentoServer) -> None:
        self.procs = server.workers()
        self.before = sum(p.memory_info().rss for p in self.procs)
        self.peak, self._stop = self.before, threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.procs))
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MIB


@contextlib.contextmanager
def running(home: Path, log: Path, **env: str) -> Iterator[BentoServer]:
    """A BentoServer, ready, and stopped on the way out (also when a test fails)."""
    server = BentoServer(home, log, **env)
    try:
        server.wait_ready(timeout=90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store of this test run's own, holding the demo model."""
    home = tmp_path_factory.mktemp("bentoml_home")
    result = run_train(home)
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="session")
def demo_tag(model_home: Path) -> str:
    return run_train(model_home).stdout.strip()


DEMO_GRPC: list[str] = []  # the demo server's gRPC address, once it is started


@pytest.fixture(scope="session")
def grpc_address(server_url: str) -> str:
    """Where the demo server (server_url) serves the Open Inference Protocol over gRPC."""
    return DEMO_GRPC[0]


@pytest.fixture(scope="session")
def server_url(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `bentoml serve` of the demo model on a free loopback port."""
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    DEMO_GRPC.append(f"127.0.0.1:{free_port()}")
    server = BentoServer(
        model_home,
        log,
        GRPC_PORT=DEMO_GRPC[0].rsplit(":", 1)[1],
        MAX_VALUES=str(TEST_MAX_VALUES),
        BATCH_MAX_SIZE=str(TEST_BATCH_MAX_SIZE),
        # The functional tests behind this server send bursts (600 batched callers) on a
        # machine shared with the rest of the suite: shedding is tested on servers of its own.
        MAX_QUEUE_MS="1000",
    )
    try:
        server.wait_ready(timeout=60)
        yield server.url
    finally:
        server.stop()
