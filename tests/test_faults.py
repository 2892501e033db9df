"""Faults, for real: SIGTERM under load, a worker killed, half-sent requests, idle connections,
and requests past what a worker admits."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import BentoServer, running

BODY = b'{"x": [1.0]}'
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Outcome:
    started: float
    kind: str  # "ok", "refused" (no connection), "unaccepted" (see below), or what went wrong


@dataclass
class Clients:
    """`n` threads sending /predict back to back, each on a keep-alive connection (opened
    again when the server says `Connection: close`), or on a new connection per request."""

    port: int
    n: int
    fresh_connections: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None or self.fresh_connections:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            fresh = conn.sock is None
            started = time.monotonic()
            try:
                conn.request("POST", "/predict", body=BODY, headers=HEADERS)
                r = conn.getresponse()
                data = r.read()
                kind = "ok" if r.status == 200 and data.startswith(b'{"y":[2.0]') else f"{r.status}"
            except ConnectionRefusedError:
                kind = "refused"
                time.sleep(0.01)
            except (ConnectionResetError, http.client.RemoteDisconnected) as exc:
                # A new connection reset before any answer: one the kernel queued that no
                # worker accepted, so the service never read its request (see
                # _patches/uvicorn_drain.py).
                kind = "unaccepted" if fresh else type(exc).__name__
            except (OSError, http.client.HTTPException) as exc:
                kind = type(exc).__name__
            if kind != "ok" or self.fresh_connections:
                conn.close()
                conn = None
            self.outcomes.append(Outcome(started, kind))

    def __enter__(self) -> Clients:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def failures(self, refused_from: float) -> list[tuple[float, str]]:
        """What failed; a new connection reset once the socket stops listening, at
        `refused_from`, is a refusal (the race in _patches/uvicorn_drain.py's docstring), not a
        failure."""
        return [
            (o.started, o.kind)
            for o in list(self.outcomes)
            if o.kind not in ("ok", "refused")
            and not (o.kind == "unaccepted" and o.started >= refused_from)
        ]

    def count(self, since: float = 0.0) -> Counter[str]:
        return Counter(o.kind for o in list(self.outcomes) if o.started >= since)


@pytest.mark.parametrize("n_workers", ["1", "2"])
def test_sigterm_under_load_fails_no_request(
    model_home: Path, tmp_path: Path, n_workers: str
) -> None:
    drain_s = 2.0
    env = {"WORKERS": n_workers, "DRAIN_SECONDS": str(drain_s)}
    server = BentoServer(model_home, tmp_path / "serve.log", **env)
    try:
        server.wait_ready(timeout=90)
        with Clients(server.port, 16) as clients:
            time.sleep(2)
            stopped_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            readyz = httpx.get(f"{server.url}/readyz").status_code  # draining: not ready
            assert server.proc.wait(timeout=30) == 0
            exit_s = time.monotonic() - stopped_at
            time.sleep(0.3)
        before, after = clients.count(), clients.count(since=stopped_at)
        # Requests begun up to 0.2 s before the listener stops can be the ones it drops.
        failed = clients.failures(refused_from=stopped_at + drain_s - 0.2)
    finally:
        server.stop()
    figures = f"{dict(before)}, after it {dict(after)}; stopped in {exit_s:.1f} s"
    print(f"\nSIGTERM, {n_workers} worker(s): {figures}")
    assert readyz == 503
    when = [(round(t - stopped_at, 3), kind) for t, kind in failed]
    assert failed == [], f"failed requests (s after SIGTERM, error): {when}"
    assert after["ok"] > 0  # it kept answering while it drained


def test_a_killed_worker_is_replaced_and_the_other_keeps_answering(
    model_home: Path, tmp_path: Path
) -> None:
    server = BentoServer(model_home, tmp_path / "serve.log", WORKERS="2")
    try:
        server.wait_ready(timeout=90)
        first = server.workers()
        assert len(first) == 2
        with Clients(server.port, 8, fresh_connections=True) as clients:
            time.sleep(1)
            killed_at = time.monotonic()
            first[0].kill()
            time.sleep(3)
        after = clients.count(since=killed_at + 0.05)  # not the requests in flight on it
        # circus notices a dead worker on its 10 s check, then starts another.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(server.workers()) < 2:
            time.sleep(0.5)
        replaced = [p.pid for p in server.workers()]
    finally:
        server.stop()
    print(f"\nafter the kill: {dict(after)}")
    assert after["ok"] > 0 and set(after) == {"ok"}, dict(after)
    assert len(replaced) == 2 and first[0].pid not in replaced


@pytest.fixture(scope="module")
def impatient(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    log = tmp_path_factory.mktemp("impatient") / "serve.log"
    with running(model_home, log, HTTP_HEADER_TIMEOUT="1", HTTP_BODY_TIMEOUT="1") as server:
        yield server


@pytest.mark.parametrize(
    ("sent", "setting"),
    [
        (b"", b"HTTP_HEADER_TIMEOUT"),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\n", b"HTTP_HEADER_TIMEOUT"),
        (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"x": [1',
            b"HTTP_BODY_TIMEOUT",
        ),
    ],
    ids=["nothing", "half-sent-headers", "half-sent-body"],
)
def test_half_sent_requests_time_out_with_408(
    impatient: BentoServer, sent: bytes, setting: bytes
) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(sent)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert setting in answer and seconds < 5
    assert httpx.post(f"{impatient.url}/predict", json={"x": [1.0]}).json()["y"] == [2.0]


def test_a_slow_but_steady_body_is_not_cut_off(impatient: BentoServer) -> None:
    body = b'{"x": [1.0, 2.0]}'
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(head)
        for i in range(0, len(body), 6):  # a chunk every 0.5 s: each gap under the 1 s timeout
            s.sendall(body[i : i + 6])
            time.sleep(0.5)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200") and b'"y":[2.0,4.0]' in answer


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from a keep-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += s.recv(4096)
    return int(lines[0].split()[1]), headers, body


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(impatient: BentoServer) -> None:
    # uvicorn's keep-alive timeout (5 s) is kept by http_protocol's sweep, not a timer.
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=15) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        idle = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server
    assert 4 < time.monotonic() - idle < 8


@pytest.fixture(scope="module")
def one_at_a_time(
    model_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BentoServer]:
    log = tmp_path_factory.mktemp("one_at_a_time") / "serve.log"
    # One worker: each worker admits its own MAX_IN_FLIGHT, and the test needs one place in all.
    with running(model_home, log, WORKERS="1", MIN_IN_FLIGHT="1", MAX_IN_FLIGHT="1") as server:
        yield server


def test_past_what_a_worker_admits_requests_are_refused_at_once(
    one_at_a_time: BentoServer, tmp_path: Path
) -> None:
    """The HTTP protocol refuses before the app: 503, JSON, Retry-After. A small request is
    refused once its body is whole (a body still arriving holds no place); a large one as
    soon as its headers arrive, before its body is sent, which is then dropped; the
    connection serves its next request."""
    rows = 3_000_000  # a file of some seconds' work holds the one place
    held: list[int] = []

    def hold() -> None:
        # The probes below may hold the one place just as the file's body is whole, and
        # then the file is the one refused: it tries again, as a client told Retry-After would.
        upload = {"file": ("big.csv", b"x\n" + b"1.5\n" * rows)}
        for _ in range(20):
            answer = httpx.post(f"{one_at_a_time.url}/predict_file", files=upload, timeout=120)
            held.append(answer.status_code)
            if answer.status_code != 503:
                return

    holder = threading.Thread(target=hold)
    holder.start()
    small = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    small += b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    large_body = b'{"x": [' + b"1.0, " * 20_000 + b"1.0]}"
    large = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    large += b"Content-Length: %d\r\n\r\n" % len(large_body)
    address = ("127.0.0.1", one_at_a_time.port)
    try:
        with socket.create_connection(address, timeout=10) as other:
            deadline = time.monotonic() + 60
            status = 200
            while status == 200 and time.monotonic() < deadline:  # until the file is at work
                started = time.monotonic()
                other.sendall(small)
                status, headers, body = read_response(other)
                time.sleep(0.02)
            took = time.monotonic() - started
            assert status == 503 and headers["retry-after"] == "1", (status, headers)
            assert "MAX_IN_FLIGHT=1" in json.loads(body)["error"]
            assert took < 1.0, took
            # A large body is refused from its headers alone, before it is sent...
            other.sendall(large)
            status, _, body = read_response(other)
            assert status == 503 and "MAX_IN_FLIGHT=1" in json.loads(body)["error"]
            # ...and its body, sent anyway, is dropped: probes (never shed) on the same
            # connection.
            other.sendall(large_body + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(other)[0] == 200
            holder.join(120)
            assert held[-1] == 200, held
            # The place is free again: the same connection is now admitted.
            other.sendall(small)
            status, _, body = read_response(other)
            assert status == 200 and json.loads(body)["y"] == [2.0]
    finally:
        holder.join(120)
