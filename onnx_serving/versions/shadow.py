"""Shadow mode: a candidate version gets a copy of the default version's requests, in the
background, and how far its answers are from the default's is recorded, never returned.

The copy is handed to one background thread after the caller's answer is computed, so it
never slows the caller; while that thread is still busy with earlier copies (at most
MAX_PENDING waiting), further requests are not shadowed and counted as skipped. The
difference is the largest absolute difference over every output value (labels and other
integers compared as numbers, strings as equal or not), observed in the
onnx_shadow_max_abs_diff histogram per shadow version.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from onnx_serving import metrics

logger = logging.getLogger("bentoml.onnx_serving.versions.shadow")
MAX_PENDING = 8


def max_abs_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, a in want.items():
        b = got[name]
        if a.shape != b.shape:
            return float("inf")
        if a.dtype.kind in "OUSb" or b.dtype.kind in "OUSb":
            worst = max(worst, 0.0 if np.array_equal(a, b) else 1.0)
        elif a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


class Shadow:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, model: Any, feeds: Any, answered: dict[str, np.ndarray]) -> None:
        """Run `model` on `feeds` in the background and record its difference from
        `answered`."""
        with self._lock:
            if self._pending >= MAX_PENDING:
                metrics.SHADOW_SKIPPED.inc()
                return
            self._pending += 1
        future = self._pool.submit(self._compare, model, feeds, answered)
        future.add_done_callback(self._done)

    def _done(self, _: Any) -> None:
        with self._lock:
            self._pending -= 1

    @staticmethod
    def _compare(model: Any, feeds: Any, answered: dict[str, np.ndarray]) -> None:
        try:
            diff = max_abs_diff(model.run(feeds), answered)
        except Exception:
            logger.exception("shadow %s failed on a request the default answered", model.tag)
            diff = float("inf")
        metrics.SHADOW_DIFF.labels(version=model.tag).observe(diff)
