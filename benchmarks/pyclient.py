"""A plain Python load client, to cross-check wrk's latency percentiles.

N keep-alive connections (asyncio streams, no HTTP library in the way), each
sending the same POST back to back for a fixed time. Prints one JSON line:
requests, errors, and latency percentiles in microseconds.

    python -m benchmarks.pyclient --port 8000 --path /predict --body body.json -c 1 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> int:
    """Send `request` back to back until `deadline`; return the number of errors."""
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            errors += not 200 <= status < 300
    except (OSError, asyncio.IncompleteReadError):
        errors += 1
    finally:
        writer.close()
    return errors


async def run(host: str, port: int, path: str, body: bytes, conns: int, duration: float) -> dict:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + duration
    errors = await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(conns))
    )
    return summary(latencies, sum(errors), time.perf_counter() - started)


def summary(latencies: list[float], errors: int, elapsed: float) -> dict:
    """What a Python load client prints: requests answered, errors, latency percentiles (µs)."""
    lat_us = np.array(latencies or [0.0]) * 1e6
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": errors,
        "p50_us": float(np.percentile(lat_us, 50)),
        "p90_us": float(np.percentile(lat_us, 90)),
        "p99_us": float(np.percentile(lat_us, 99)),
        "max_us": float(lat_us.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--body", required=True, help="file with the JSON body")
    parser.add_argument("-c", "--conns", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        body = f.read()
    result = asyncio.run(run(args.host, args.port, args.path, body, args.conns, args.duration))
    print("PY_JSON " + json.dumps(result))


if __name__ == "__main__":
    main()
