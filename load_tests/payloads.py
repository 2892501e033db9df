"""Request bodies and response checks shared by the Locust users.

Every response is checked against the model's contract (y = 2x, computed in float32):
a wrong number, a missing field or a non-2xx status marks the request as failed.
"""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import numpy as np

# The model computes in float32, so the exact answer is 2 * float32(x); allow a few ulps.
RTOL = 8 * float(np.finfo(np.float32).eps)
ATOL = 1e-12
JSON_HEADERS = {"Content-Type": "application/json"}


def random_values(n: int) -> list[float]:
    """n values with a few decimals, spread over a realistic range."""
    return [round(random.uniform(-1000.0, 1000.0), 3) for _ in range(n)]


def expected(x: list[float] | np.ndarray) -> np.ndarray:
    return 2 * np.asarray(x, dtype=np.float32)


def check_predictions(y: Any, x: list[float] | np.ndarray) -> str | None:
    """None if `y` is 2x within float32 tolerance, else why not."""
    want = expected(x)
    try:
        got = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return f"y is not a list of numbers: {str(y)[:80]}"
    if got.shape != want.shape:
        return f"expected {want.size} predictions, got {got.size}"
    bad = ~np.isclose(got, want, rtol=RTOL, atol=ATOL)
    if bad.any():
        i = int(np.argmax(bad))
        return f"wrong prediction at {i}: x={float(np.asarray(x)[i])} y={got[i]} want {want[i]}"
    return None


def check_json_body(body: bytes | str | None, x: list[float] | np.ndarray) -> str | None:
    """Check a /predict or /predict_batched body: {"y": [...], "model": "..."}."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return f"body is not JSON: {(body or b'')[:80]!r}"
    if not isinstance(data, dict):
        return "body is not a JSON object"
    missing = {"y", "model"} - data.keys()
    if missing:
        return f"missing field(s): {', '.join(sorted(missing))}"
    return check_predictions(data["y"], x)


class JsonBatch:
    """A pre-encoded request body, so large batches cost the load generator no JSON encoding."""

    def __init__(self, n: int) -> None:
        self.x = np.asarray(random_values(n))
        self.body = json.dumps({"x": self.x.tolist()}).encode()


class CsvFile:
    """A CSV upload with an `x` column, and the check of the CSV that comes back."""

    def __init__(self, rows: int) -> None:
        self.x = np.asarray(random_values(rows))
        self.content = ("x\n" + "\n".join(repr(v) for v in self.x.tolist()) + "\n").encode()

    def check(self, body: bytes | None) -> str | None:
        reader = csv.DictReader(io.StringIO((body or b"").decode(errors="replace")))
        if not reader.fieldnames or not {"x", "y"} <= set(reader.fieldnames):
            return f"CSV header has no x and y columns: {reader.fieldnames}"
        try:
            y = [float(row["y"]) for row in reader]
        except (TypeError, ValueError) as exc:
            return f"bad y value in CSV: {exc}"
        return check_predictions(y, self.x)


def check_metadata(body: bytes | None) -> str | None:
    """GET /metadata must name the model that answers."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return "metadata is not JSON"
    return None if isinstance(data, dict) and data.get("tag") else "metadata has no tag"
