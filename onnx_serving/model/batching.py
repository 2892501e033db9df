"""What adaptive batching can save for a model, measured once at import, and the batching
settings chosen from it.

A call of the model at 1, 8, 64 and 256 rows is timed with the service's own session
options (`call_costs`). `choose` then picks:

- max_batch_size: the most rows one call can take within BATCH_BUDGET_MS, extrapolated at
  the cost per row of the largest size measured, as a power of two within 16..4096. A batch
  is one call that every request in it waits for: bounding its time bounds what batching adds
  to latency, and past a few milliseconds a bigger batch saves nothing more per row;
- max_latency_ms: how long a request may wait before adaptive batching refuses it (503):
  a second, or more for a model whose full batch takes longer than a quarter of it. The
  admission control (admission.py) keeps queues short under overload; this refusal is the
  backstop for a request that is already hopelessly late. A budget at the SLA (100 ms) refused
  requests in bursts that the service then answered (the sweep, and the test with 600
  concurrent callers).

Both are stored with the model (metadata "batching") and can be overridden at serve time
with BATCH_MAX_SIZE and BATCH_MAX_LATENCY_MS. README, Performance, has the sweep behind them.
A model whose one-row call costs OFFLOAD_MS or more runs its batches in a thread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_serving.model.signature import Signature, example_feeds

if TYPE_CHECKING:
    import onnxruntime as ort

ROWS = (1, 8, 64, 256)
# A model whose one-row call costs this much runs its batches in a thread (see `resolve`).
OFFLOAD_MS = 0.2
BATCH_BUDGET_MS = 10.0
LATENCY_MS = 1000
MIN_BATCH, MAX_BATCH = 16, 4096
DEFAULT = {"max_batch_size": MAX_BATCH, "max_latency_ms": 1000}  # older store entries


def sample_feeds(sig: Signature, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`rows` rows of every input: random normal floats (zeros would take one path through
    a tree), zeros for integers and booleans, empty strings."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, one in example_feeds(sig).items():
        shape = (rows, *one.shape[1:])
        if one.dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(one.dtype)
        else:
            out[name] = np.resize(one, shape)
    return out


def call_costs(session: ort.InferenceSession, sig: Signature, max_ms: float = 200.0) -> dict:
    """Median milliseconds per call at each of ROWS (larger sizes skipped once a call takes
    more than `max_ms`): {rows: ms}."""
    costs: dict[int, float] = {}
    for rows in ROWS:
        feeds = sample_feeds(sig, rows)
        session.run(None, feeds)  # warm-up: buffers for this size
        times = []
        deadline = time.perf_counter() + 0.3
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
            started = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - started) * 1000)
        costs[rows] = round(statistics.median(times), 4)
        if costs[rows] > max_ms:
            break
    return costs


def choose(costs: dict[int, float]) -> dict[str, Any]:
    """The batching settings for a model with these call costs (see the module's doc)."""
    rows = max(costs)
    per_row = costs[rows] / rows
    fits = int(BATCH_BUDGET_MS / per_row) if per_row > 0 else MAX_BATCH
    size = MIN_BATCH
    while size * 2 <= min(fits, MAX_BATCH):
        size *= 2
    full_batch_ms = per_row * size
    latency = max(LATENCY_MS, int(np.ceil(4 * full_batch_ms)))
    return {"max_batch_size": size, "max_latency_ms": latency}


def profile(session: ort.InferenceSession, sig: Signature) -> dict[str, Any]:
    """The metadata stored with a batchable model: its call costs and the settings chosen."""
    costs = call_costs(session, sig)
    return {"cost_ms": {str(k): v for k, v in costs.items()}, **choose(costs)}


@dataclass(frozen=True)
class Batching:
    """The adaptive batching a service runs with: sizes, and where each came from."""

    max_batch_size: int
    max_latency_ms: int
    # Batches of a model that takes long run in a thread: while the model runs, the event
    # loop goes on reading requests, which queue for the next batch. A call of microseconds
    # runs inline, where a thread hop would cost more than the call.
    in_thread: bool
    source: dict[str, str]
    cost_ms: dict[str, float]

    def metadata(self) -> dict[str, Any]:
        """As /metadata shows it."""
        return {
            "max_batch_size": self.max_batch_size,
            "max_latency_ms": self.max_latency_ms,
            "from": self.source,
            "cost_ms": self.cost_ms,
            "in_thread": self.in_thread,
        }


def resolve(
    metadata: dict[str, Any], max_batch_size: int | None, max_latency_ms: int | None
) -> Batching:
    """The batching settings to serve with: the environment's (BATCH_MAX_SIZE,
    BATCH_MAX_LATENCY_MS) where set, else the ones stored with the model at import."""
    stored = metadata.get("batching") or DEFAULT
    cost_ms = stored.get("cost_ms", {})
    return Batching(
        max_batch_size=max_batch_size or stored["max_batch_size"],
        max_latency_ms=max_latency_ms or stored["max_latency_ms"],
        in_thread=cost_ms.get("1", 0) >= OFFLOAD_MS,
        source={
            "max_batch_size": "BATCH_MAX_SIZE" if max_batch_size else "model",
            "max_latency_ms": "BATCH_MAX_LATENCY_MS" if max_latency_ms else "model",
        },
        cost_ms=cost_ms,
    )
