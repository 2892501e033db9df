"""The limit: in-process ONNX Runtime, no HTTP. Prints one JSON line.

For 1 and 1,000 values per call: `session.run` alone, and `session.run` with the
JSON work a request needs (decode the body, build the float32 array, encode the
answer). The bench runs this pinned to the server's core.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import bentoml
import numpy as np
import onnxruntime as ort

from onnx_serving.config import settings
from onnx_serving.runner import session_options


def _calls_per_s(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm-up
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(50):
            fn()
        calls += 50
    return calls / (now - started)


def measure(seconds: float) -> list[dict]:
    stored = bentoml.models.get("linear-2x:latest")
    # The service's own session options, so "the limit" is what the service could reach.
    session = ort.InferenceSession(
        stored.path_of("model.onnx"),
        sess_options=session_options(settings()),
        providers=["CPUExecutionProvider"],
    )
    name, tag = session.get_inputs()[0].name, str(stored.tag)
    results = []
    for n in (1, 1000):
        x = np.arange(n, dtype=np.float32).reshape(-1, 1) / 7
        body = json.dumps({"x": x.reshape(-1).tolist()}).encode()

        def bare(x: np.ndarray = x) -> object:
            return session.run(None, {name: x})

        def with_json(body: bytes = body) -> bytes:
            values = json.loads(body)["x"]
            xa = np.asarray(values, dtype=np.float32).reshape(-1, 1)
            y = session.run(None, {name: xa})[0]
            return json.dumps({"y": y.reshape(-1).tolist(), "model": tag}).encode()

        for mode, fn in (("session.run", bare), ("session.run+JSON", with_json)):
            rate = _calls_per_s(fn, seconds)
            results.append({"mode": mode, "values": n, "calls_per_s": rate, "us": 1e6 / rate})
    return results


if __name__ == "__main__":
    print("LIMIT_JSON " + json.dumps(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)))
