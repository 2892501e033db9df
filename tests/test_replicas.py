"""The Deployment's settings proven against the real image, and what Kubernetes does with two
replicas done with real parts on one machine: the image run as deploy/k8s declares it (user,
read-only root filesystem with the same writable paths, no capabilities, same environment
and probes); two such replicas behind HAProxy (Debian's) with a distributed Locust run (a
master and two workers) against it; one replica stopped the way Kubernetes stops a pod
(out of the balancer, SIGTERM after the preStop pause) and replaced, with no request failing.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from endpoint_checks import check_predict_file_csv
from image_support import BuiltImage, Container, docker
from manifests import docker_run_args, one, render, service_container

from harness.local_server import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py")]
# preStop's pause, shortened from the Deployment's 10 s: on one machine the balancer takes the
# replica out at once, where a cluster needs seconds to update every node's endpoints.
PAUSE_S = 2.0


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return one(render("overlays/prod"), "Deployment", "onnx-serving")


@pytest.fixture
def replicas() -> Iterator[list[Container]]:
    """Containers started by the test, as the Deployment runs them; all removed at the end."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def start_replica(
    started: list[Container], image: str, deployment: dict[str, Any], port: int | None = None
) -> Container:
    container = Container(image, run_args=docker_run_args(deployment))
    if port is not None:
        container.port = port
    started.append(container)
    return container.start(timeout=90)


def test_the_image_serves_under_the_deployments_settings(
    built_image: BuiltImage, deployment: dict[str, Any], replicas: list[Container]
) -> None:
    container = start_replica(replicas, built_image.ref, deployment)
    host = docker("inspect", "-f", "{{json .HostConfig.ReadonlyRootfs}}", container.name)
    assert host == "true"
    uid = str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    assert docker("exec", container.name, "id", "-u") == uid
    denied = subprocess.run(
        ["docker", "exec", container.name, "touch", "/home/bentoml/bento/x"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    probes = service_container(deployment)
    with httpx.Client(base_url=container.url, timeout=10) as http:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = probes[probe]
            if "grpc" in spec:  # Kubernetes' gRPC probe: grpc.health.v1, on the gRPC port
                assert spec["grpc"]["port"] == 8001  # GRPC_PORT's default; here a free port
                assert grpc_health(f"127.0.0.1:{container.grpc_port}") == "SERVING"
            else:
                assert http.get(spec["httpGet"]["path"]).status_code == 200
        assert http.post("/predict", json={"x": [1.5]}).json()["y"] == [3.0]
        # An upload is spooled to /tmp, the writable mount, and its result too.
        check_predict_file_csv(http)
        assert "onnx_predictions_total" in http.get("/metrics").text  # its own writable dir


def grpc_health(address: str) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)


class HAProxy:
    """HAProxy on a loopback port in front of the replicas, health-checking /readyz, with its
    runtime API on a socket (what a Kubernetes Service's endpoints do, made explicit)."""

    def __init__(self, tmp: Path, servers: dict[str, int]) -> None:
        self.port, self.socket = free_port(), tmp / "haproxy.sock"
        backends = "\n".join(
            f"  server {name} 127.0.0.1:{port} check" for name, port in servers.items()
        )
        config = tmp / "haproxy.cfg"
        config.write_text(f"""global
  stats socket {self.socket} mode 600 level admin
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend service
  bind 127.0.0.1:{self.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 1 rise 2
{backends}
""")
        self.log = (tmp / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.socket.exists() or self.command("show servers state").count("\n") < 3:
            assert self.proc.poll() is None and time.monotonic() < deadline, "haproxy not up"
            time.sleep(0.1)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: s.recv(65536), b"")).decode()

    def sessions(self, server: str) -> int:
        """Requests sent to `server` so far (`show stat`'s stot)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for row in csv.reader(lines[1:]):
            if len(row) > 1 and row[1] == server:
                return int(row[header.index("stot")])
        raise KeyError(server)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


def distributed_locust(url: str, tmp: Path, seconds: int) -> list[subprocess.Popen[bytes]]:
    """A Locust master (headless, 16 RealtimeUsers at 10 requests/s each, no failure allowed)
    and two workers, as deploy/k8s/load-test runs them; the master's exit code is the verdict."""
    port = free_port()
    master = [
        *LOCUST, "--master", "--master-bind-host=127.0.0.1", f"--master-bind-port={port}",
        "--expect-workers=2", "--headless", "--users=16", "--spawn-rate=16",
        f"--run-time={seconds}s", f"--host={url}", f"--csv={tmp / 'locust'}",
        "--max-fail-ratio=0", "--p95-ms=1000", "--p99-ms=2000", "--min-rps=50",
        "--only-summary", "RealtimeUser",
    ]  # fmt: skip
    worker = [*LOCUST, "--worker", "--master-host=127.0.0.1", f"--master-port={port}"]
    procs = []
    for i, cmd in enumerate([master, worker, worker]):
        log = (tmp / f"locust-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    return procs


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)


def test_two_replicas_lose_no_request_while_one_is_replaced(
    built_image: BuiltImage,
    deployment: dict[str, Any],
    replicas: list[Container],
    deploy_tools: None,
    tmp_path: Path,
) -> None:
    first = start_replica(replicas, built_image.ref, deployment)
    second = start_replica(replicas, built_image.ref, deployment)
    balancer = HAProxy(tmp_path, {"r1": first.port, "r2": second.port})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = distributed_locust(f"http://127.0.0.1:{balancer.port}", tmp_path, seconds=35)
        time.sleep(8)  # the workers connect, the load runs on both replicas
        assert balancer.sessions("r1") > 0 and balancer.sessions("r2") > 0
        # Kubernetes stopping a pod: out of the endpoints, the preStop pause, then SIGTERM;
        # the container drains (DRAIN_SECONDS) and exits within the grace period.
        balancer.command("set server replicas/r1 state drain")
        time.sleep(PAUSE_S)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        stopped = time.monotonic()
        docker("stop", "-t", str(grace), first.name, timeout=grace + 30)
        stop_seconds = time.monotonic() - stopped
        assert first.state()["ExitCode"] == 0, first.logs()
        first.remove()
        # The replacement: a new container on the same address, back in once it is ready.
        start_replica(replicas, built_image.ref, deployment, port=first.port)
        before = balancer.sessions("r1")
        balancer.command("set server replicas/r1 state ready")
        master = procs[0]
        master.wait(timeout=60)
        served_by_replacement = balancer.sessions("r1") - before
    finally:
        stop_all(procs)
        balancer.stop()
    summary = (tmp_path / "locust-0.log").read_text()
    assert master.returncode == 0, summary[-4000:]
    with (tmp_path / "locust_stats.csv").open() as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    print(
        f"\n  two replicas behind HAProxy: {total['Request Count']} requests, "
        f"{total['Failure Count']} failed; the stopped replica exited 0 after {stop_seconds:.1f} s"
        f", the replacement served {served_by_replacement}"
    )
    assert int(total["Failure Count"]) == 0 and int(total["Request Count"]) > 2000
    assert served_by_replacement > 0
