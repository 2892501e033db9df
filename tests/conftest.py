"""Shared fixtures: a private model store and a real `bentoml serve` on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

# Image fixtures (docker_engine, built_image, image_url) live beside this file.
pytest_plugins = ["image_support"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The largest request the test server takes; the load tests send 100,000 values.
TEST_MAX_VALUES = 150_000
TEST_BATCH_MAX_SIZE = 2_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class BentoServer:
    """`bentoml serve` in its own session; stop() ends it and every worker it started."""

    def __init__(self, home: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(BIN / "bentoml"),
                "serve",
                "service:OnnxModelService",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children: set[int] = set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._remember_children()
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bentoml serve exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    self._remember_children()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url}/readyz not ready after {timeout} s:\n{self.output()}")

    def _remember_children(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self._children |= {
                c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)
            }

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self._remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self._children:  # workers live in process groups of their own
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        self._log_file.close()


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


@pytest.fixture(scope="session")
def server_url(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `bentoml serve` of the demo model on a free loopback port."""
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    server = BentoServer(
        model_home,
        log,
        MAX_VALUES=str(TEST_MAX_VALUES),
        BATCH_MAX_SIZE=str(TEST_BATCH_MAX_SIZE),
    )
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()
