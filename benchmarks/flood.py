"""A flood of clients that never back off: N keep-alive connections, each sending the next
request as soon as the last is answered, for a fixed time. Latency is kept per status, so
admitted answers (200) and refusals (503) are measured apart, which wrk can't do.

    .venv/bin/python -m benchmarks.flood URL [--connections 1024] [--seconds 10]

Prints one JSON line: per status, the count, the rate and p50/p99/max in ms; plus connection
errors. Loopback only. Written on asyncio + uvloop raw protocols so that one client core can
out-send what one server core refuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from urllib.parse import urlsplit

import uvloop


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Client(asyncio.Protocol):
    """One keep-alive connection: send, wait for the whole response, send again."""

    def __init__(self, request: bytes, results: dict, stop_at: float, done: asyncio.Future):
        self.request, self.results, self.stop_at, self.done = request, results, stop_at, done
        self.buffer = b""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        if time.perf_counter() >= self.stop_at:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").lower().split("\r\n")
            fields = dict(line.split(":", 1) for line in head[1:])
            length = int(fields.get("content-length", 0))
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[0][9:12])
            self.results[status].append((time.perf_counter() - self.sent_at) * 1000)
            self.buffer = self.buffer[end + 4 + length :]
            if fields.get("connection", "").strip() == "close":
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.results["errors"].append(0.0)
        if not self.done.done():
            self.done.set_result(None)


async def flood(url: str, connections: int, seconds: float, body: bytes, path: str) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    results: dict = defaultdict(list)
    started = time.perf_counter()
    stop_at = started + seconds
    waits = []
    for _ in range(connections):
        done = loop.create_future()
        try:
            await loop.create_connection(
                lambda d=done: Client(request, results, stop_at, d), host, port
            )
        except OSError:
            results["errors"].append(0.0)
            continue
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 30)
    elapsed = time.perf_counter() - started
    report = {"connections": connections, "seconds": round(elapsed, 1)}
    for status, ms in sorted(results.items(), key=str):
        report[str(status)] = {
            "count": len(ms),
            "per_s": round(len(ms) / elapsed),
            "p50_ms": round(percentile(ms, 0.5), 1),
            "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", default='{"x": [1.5]}')
    args = parser.parse_args()
    body = args.body.encode()
    report = uvloop.run(flood(args.url, args.connections, args.seconds, body, args.path))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
