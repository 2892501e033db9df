"""The servers a bench run starts: `bentoml serve` of this service and the FastAPI baseline,
pinned to the server's core, with their process tree's CPU time and memory."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from harness.local_server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SERVER_CPU, LOAD_CPU = 0, 1
ALL_CPUS = set(range(os.cpu_count() or 1))


def pin(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []


class Server(ServerProcess):
    """A server pinned to `cpus`, with its tree's CPU time and RSS."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        env: dict[str, str],
        log: Path,
        cpus: set[int],
        cwd: Path = ROOT,
    ) -> None:
        super().__init__(name, pin(cpus) + cmd, port, env, log, cwd)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total


def start_bentoml(
    name: str,
    log_dir: Path,
    cpus: set[int],
    env: dict[str, str],
    service: str = "service:OnnxServing",
    working_dir: Path = ROOT,
) -> Server:
    """`bentoml serve` of `service` with `env` (MODEL_NAME, WORKERS, ...), ready."""
    port = free_port()
    cmd = [str(Path(PY).parent / "bentoml"), "serve", service, "--port", str(port)]
    cmd += ["--host", "127.0.0.1"]
    server = Server(name, cmd, port, env, log_dir / f"{name}.log", cpus, cwd=working_dir)
    server.wait_ready("/readyz")
    return server


def start_baseline(name: str, log_dir: Path, model: str, extra_args: list[str]) -> Server:
    """The FastAPI baseline (baseline_fastapi.py) serving `model`, ready."""
    port = free_port()
    cmd = [PY, "-m", "uvicorn", "benchmarks.baseline_fastapi:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", *extra_args]
    env = {"BASELINE_MODEL": model}
    server = Server(name, cmd, port, env, log_dir / f"{name}.log", {SERVER_CPU})
    server.wait_ready("/docs")
    return server


@contextlib.contextmanager
def running(servers: list[Server], server: Server) -> Iterator[Server]:
    """`server`, registered in `servers` (stopped by the bench on Ctrl-C) until the block ends."""
    servers.append(server)
    try:
        yield server
    finally:
        server.stop()
        servers.remove(server)
