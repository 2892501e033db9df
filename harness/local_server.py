"""A server process started on loopback by the tests or the benchmark, and its clean stop.

`bentoml serve` starts its workers in process groups of their own, so ending the
command's group is not enough: the process tree is remembered while it runs and
whatever outlives the command is ended by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import psutil

# Ports handed out below the kernel's ephemeral range (32768-60999 on Linux): a port that
# bind(0) chose can become an outgoing connection's local port before the server binds it
# ("Failed to bind" in a CI run), these can't. Each is handed out once per process.
_PORTS = range(20_000, 32_768)
_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range."""
    for _ in range(1_000):
        port = random.choice(_PORTS)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS}")


def bentoml_workers(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` that are BentoML service workers, alive."""
    found = []
    for p in procs:
        try:
            if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


class ServerProcess:
    """`cmd` in a session of its own, output to `log`; it should listen on 127.0.0.1:`port`."""

    def __init__(
        self, name: str, cmd: list[str], port: int, env: dict[str, str], log: Path, cwd: Path
    ) -> None:
        self.name, self.port, self.log_path = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        # Own session: Ctrl-C at the terminal reaches only us, and we stop the server.
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            # No gRPC unless asked for: servers started side by side would share its port. No
            # drain unless asked for (the drain tests set DRAIN_SECONDS): a stop takes 0.5 s,
            # not 1.7 s, for each of the many servers a test run starts.
            env={
                "GRPC_PORT": "0",
                "GRPC_HOST": "127.0.0.1",
                "DRAIN_SECONDS": "0",
                **os.environ,
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.known: dict[int, psutil.Process] = {}

    def tree(self) -> list[psutil.Process]:
        """The live processes of the tree, remembered so that stop() can find them later."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.known.setdefault(p.pid, p)
        return procs

    def workers(self) -> list[psutil.Process]:
        """BentoML's worker processes in the tree (a killed one, a zombie until reaped, not)."""
        return bentoml_workers(self.tree())

    def log_tail(self, chars: int = 5000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, path: str = "/readyz", timeout: float = 90.0) -> None:
        """Until GET `path` answers 200; RuntimeError (with the log) if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tree()
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + path, timeout=2) as r,
            ):
                if r.status == 200:
                    self.tree()
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {path} not 200 after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        # Workers that outlived the command: end them by PID.
        for p in self.known.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running():
                    p.kill()
        self._log.close()
