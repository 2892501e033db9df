"""Load generators (wrk, the plain Python client) pinned to the load core, and what each run
cost both sides in CPU."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

import psutil

from benchmarks.servers import LOAD_CPU, PY, ROOT, Server, pin

HERE = Path(__file__).resolve().parent


class Measure:
    """Wall time, server tree CPU and load-generator CPU over a block.

    The load generator is a child we wait for: RUSAGE_CHILDREN counts exactly its
    CPU time (psutil can't read a process after it exited).
    """

    def __init__(self, server: Server | None) -> None:
        self.server = server

    def __enter__(self) -> Measure:
        self.srv0 = self.server.cpu_seconds() if self.server else 0.0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.gen0 = ru.ru_utime + ru.ru_stime
        self.self0 = sum(psutil.Process().cpu_times()[:2])
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        gen = ru.ru_utime + ru.ru_stime - self.gen0
        # Work done in this process (in-process clients) counts as load generation too.
        gen += sum(psutil.Process().cpu_times()[:2]) - self.self0
        self.loadgen_cpu = 100 * gen / self.wall
        self.server_cpu = (
            100 * (self.server.cpu_seconds() - self.srv0) / self.wall if self.server else None
        )


def tagged_json(out: str, tag: str) -> dict:
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    raise RuntimeError(f"no {tag} line in output:\n{out[-2000:]}")


def run_wrk(
    server: Server,
    path: str,
    body: Path,
    conns: int,
    duration: float,
    threads: int = 1,
    cpus: set[int] | None = None,
    content_type: str = "application/json",
    header: str | None = None,
) -> tuple[dict, Measure]:
    cmd = [*pin(cpus or {LOAD_CPU}), "wrk", f"-t{threads}", f"-c{conns}"]
    cmd += [f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(HERE / "wrk_post.lua")]
    cmd += [f"http://127.0.0.1:{server.port}{path}"]
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_CONTENT_TYPE": content_type}
    if header:
        env["WRK_HEADER"] = header
    with Measure(server) as m:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=duration + 30, check=True
        )
    return tagged_json(out.stdout, "WRK_JSON"), m


def run_pyclient(
    server: Server, path: str, body: Path, conns: int, duration: float
) -> tuple[dict, Measure]:
    cmd = [*pin({LOAD_CPU}), PY, "-m", "benchmarks.pyclient", "--port", str(server.port)]
    cmd += ["--path", path, "--body", str(body), "-c", str(conns), "-d", str(duration)]
    with Measure(server) as m:
        out = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 60, check=True
        )
    return tagged_json(out.stdout, "PY_JSON"), m


def run_grpc(
    server: Server, port: int, model: str, values: int, conns: int, duration: float
) -> tuple[dict, Measure]:
    """grpc_client.py: `conns` ModelInfer calls in flight, each of `values` values."""
    cmd = [*pin({LOAD_CPU}), PY, "-m", "benchmarks.grpc_client", "--port", str(port)]
    cmd += ["--model", model, "--values", str(values), "-c", str(conns), "-d", str(duration)]
    with Measure(server) as m:
        out = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 60, check=True
        )
    return tagged_json(out.stdout, "GRPC_JSON"), m
