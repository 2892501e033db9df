"""Fixtures for the Docker image: an engine, the image built once, a container serving it.

Loaded as a plugin (tests/conftest.py: `pytest_plugins = ["image_support"]`), so every test
module shares one build and one running container:

    docker_engine  session: scripts/docker_engine.sh; skips where no engine can be had,
                   fails instead when CI=true
    built_image    session: scripts/build_image.sh with OFFLINE=1 (no registry here)
    image_container / image_url
                   session: the image on a free loopback port with --network host;
                   image_url is "http://127.0.0.1:PORT"; the container is always removed
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.local_server import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
# Figures the image tests measure; printed in pytest's terminal summary.
FIGURES: dict[str, str] = {}


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI and return its stdout (stripped)."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def image_env() -> dict[str, str]:
    """The environment `make` gives the scripts: the project's model store, no tracking."""
    return {
        **os.environ,
        "BENTOML_HOME": os.environ.get("BENTOML_HOME") or str(ROOT / ".bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }


@dataclass
class BuiltImage:
    ref: str  # the immutable tag, onnx-serving:<project version>-<content hash>
    tags: list[str]
    build_seconds: float


@dataclass
class Container:
    """A detached container of the image, serving on a loopback port of the host network."""

    image: str
    port: int = field(default_factory=free_port)
    # gRPC on a port of its own: containers on the host network would share 8001.
    grpc_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"onnx-serving-test-{uuid.uuid4().hex[:8]}")
    ready_seconds: float | None = None
    run_args: list[str] = field(default_factory=list)  # more `docker run` options

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Container:
        """docker run, then wait for /readyz 200; ready_seconds is the cold start.

        A free port can be taken between its choice and the container's bind (by the ZeroMQ
        sockets BentoML's supervisor opens on loopback, say): then what answers is not HTTP,
        or the container exits with "address already in use", and the run is tried again on
        another port."""
        for _ in range(3):
            if self._run(timeout):
                return self
            self.remove()
            self.port = free_port()
        raise RuntimeError(f"{self.name} could not take a free port three times")

    def _run(self, timeout: float) -> bool:
        started = time.monotonic()
        docker(
            "run", "-d", "--name", self.name, "--network", "host", *self.run_args,
            "-e", f"BENTOML_PORT={self.port}", "-e", "BENTOML_HOST=127.0.0.1",
            "-e", f"GRPC_PORT={self.grpc_port}", "-e", "GRPC_HOST=127.0.0.1",
            self.image, "serve", "--port", str(self.port),
        )  # fmt: skip
        while time.monotonic() - started < timeout:
            try:
                if is_ready(self.url):
                    self.ready_seconds = time.monotonic() - started
                    return True
            except http.client.HTTPException:  # another program owns the port
                return False
            if self.state()["Status"] == "exited":
                if "address already in use" in self.logs().lower():
                    return False
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on {self.url}:\n{self.logs()}")

    def state(self) -> dict:
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.name))

    def logs(self) -> str:
        result = subprocess.run(
            ["docker", "logs", "--tail", "60", self.name],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers; skip without one, but never in CI (CI=true)."""
    try:
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "docker_engine.sh")],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        reason = (result.stdout + result.stderr).strip()[-2000:]
        ok = result.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, reason = False, str(exc)
    if not ok:
        message = f"no Docker engine could be made available: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def build_image(env: dict[str, str]) -> tuple[str, float, str]:
    """scripts/build_image.sh from the offline base with `env`: the image, the seconds it
    took, and what the script said on the way."""
    started = time.monotonic()
    build = subprocess.run(
        ["bash", "scripts/build_image.sh"],
        cwd=ROOT, env={**env, "OFFLINE": "1"}, capture_output=True, text=True, timeout=1200,
        check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr[-5000:]
    return build.stdout.strip().splitlines()[-1], time.monotonic() - started, build.stderr


@pytest.fixture(scope="session")
def built_image(docker_engine: None) -> BuiltImage:
    """The image, built once per run from the offline base (no registry is reachable)."""
    env = image_env()
    model = subprocess.run(
        [str(VENV_PYTHON), "train_and_save.py", "--if-missing"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert model.returncode == 0, model.stdout + model.stderr
    ref, seconds, _ = build_image(env)
    tags = json.loads(docker("image", "inspect", "-f", "{{json .RepoTags}}", ref))
    FIGURES["build (scripts/build_image.sh, OFFLINE=1)"] = f"{seconds:.0f} s"
    return BuiltImage(ref=ref, tags=tags, build_seconds=seconds)


@dataclass
class SignedImage:
    ref: str
    model_dir: Path  # the signed demo's files, as the image holds them
    public: Path  # the key that signed it
    other: Path  # a key that did not


@pytest.fixture(scope="session")
def signed_image(
    built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedImage]:
    """The demo model signed with a key made here, and its image (scripts/build_image.sh
    gives a signed model's image the verifier); the image is removed at the end."""
    import shutil

    from test_signing import ec_key

    tmp = tmp_path_factory.mktemp("signed_image")
    home = tmp / "home"
    shutil.copytree(Path(image_env()["BENTOML_HOME"]) / "models" / "linear-2x",
                    home / "models" / "linear-2x")  # fmt: skip
    private, public, _ = ec_key(tmp, "team")
    other = ec_key(tmp, "other")[1]
    env = {**image_env(), "BENTOML_HOME": str(home)}
    signed = subprocess.run(
        [str(VENV_PYTHON), "train_and_save.py", "sign", "linear-2x:latest", "--key", str(private)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stdout + signed.stderr
    ref, seconds, said = build_image(env)
    assert "the image gets the verifier" in said
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", ref)) / 1e6
    FIGURES["signed model's image (with the verifier)"] = (
        f"{size_mb:.0f} MB, built in {seconds:.0f} s"
    )
    (model_dir,) = (home / "models" / "linear-2x").glob("*/model.sig")
    try:
        yield SignedImage(ref, model_dir.parent, public, other)
    finally:
        docker("rmi", "-f", ref, "onnx-serving:latest", check=False)
        docker("tag", built_image.ref, "onnx-serving:latest", check=False)


def refused_start(image: str, *run_args: str) -> str:
    """`docker run` of `image` with `run_args`, which must stop at start: its output."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", *run_args, "-e", "GRPC_PORT=0",
         image, "serve", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def image_container(built_image: BuiltImage) -> Iterator[Container]:
    """The image serving on a free loopback port; removed at the end, also on failure."""
    container = Container(built_image.ref)
    try:
        container.start()
        FIGURES["cold start (session container)"] = f"{container.ready_seconds:.2f} s"
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="session")
def image_url(image_container: Container) -> str:
    """Base URL of the containerized service, e.g. "http://127.0.0.1:PORT"."""
    return image_container.url


def median_seconds(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("Docker image figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
