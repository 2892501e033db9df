"""The limit: in-process ONNX Runtime, no HTTP, for one model of the store. Prints one line.

- `costs`: milliseconds per `session.run` at 1, 8, 64 and 256 rows (what adaptive batching
  can save at best: the cost per row at 1 row against at 256), measured the way the import
  measures it (onnx_serving/model/batching.py);
- `json`: calls per second of `session.run` with the JSON work a request needs (decode the
  body, build the float32 array, encode the answer), for the bodies the bench sends.

The bench runs this pinned to the server's core:

    python -m benchmarks.limit MODEL SECONDS BODY.json [BODY.json ...]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort

from onnx_serving.config import settings
from onnx_serving.model import batching
from onnx_serving.model import store as model_store
from onnx_serving.model.runner import session_options


def _calls_per_s(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm-up
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        fn()
        calls += 1
    return calls / (now - started)


def measure(model: str, seconds: float, bodies: list[Path]) -> dict:
    stored = bentoml.models.get(model)
    sig = model_store.signature_of(stored)
    # The service's own session options, so "the limit" is what the service could reach.
    session = ort.InferenceSession(
        stored.path_of(model_store.ONNX_FILENAME),
        sess_options=session_options(settings()),
        providers=["CPUExecutionProvider"],
    )
    name, tag = session.get_inputs()[0].name, str(stored.tag)
    width = sig.inputs[0].width or 1
    result = {"model": tag, "costs": batching.call_costs(session, sig), "json": []}
    for path in bodies:
        body = path.read_bytes()

        def with_json(body: bytes = body) -> bytes:
            x = np.asarray(json.loads(body)["x"], dtype=np.float32).reshape(-1, width)
            y = session.run(None, {name: x})[0]
            return json.dumps({"y": y.tolist(), "model": tag}).encode()

        rate = _calls_per_s(with_json, seconds)
        result["json"].append({"body": path.name, "calls_per_s": rate, "us": 1e6 / rate})
    return result


if __name__ == "__main__":
    model, seconds, *bodies = sys.argv[1:]
    out = measure(model, float(seconds), [Path(b) for b in bodies])
    print("LIMIT_JSON " + json.dumps(out))
