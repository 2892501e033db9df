"""The request bodies a bench run sends, written once per run into its temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def values(rows: int, features: int) -> np.ndarray:
    """`rows` x `features` float32 values, the same on every run."""
    if features == 1:  # the demo model: exact in float32 and easy to check by eye
        return (np.arange(rows, dtype=np.float32) / 7).reshape(rows, 1)
    return np.random.default_rng(0).uniform(-1, 1, (rows, features)).astype(np.float32)


def json_body(tmp: Path, rows: int, features: int, flat: bool = False) -> Path:
    """`{"x": [[...], ...]}` (rows), or `{"x": [...]}` for one feature sent flat."""
    path = tmp / f"body_{rows}x{features}{'_flat' if flat else ''}.json"
    if not path.exists():
        x = values(rows, features)
        path.write_text(json.dumps({"x": x.reshape(-1).tolist() if flat else x.tolist()}))
    return path


def binary_body(tmp: Path, rows: int) -> Path:
    """The demo's values as little-endian float32, for /predict_binary."""
    path = tmp / f"body_{rows}.f32"
    if not path.exists():
        values(rows, 1).astype("<f4").tofile(path)
    return path


def v2_binary_body(tmp: Path, rows: int) -> tuple[Path, str]:
    """The same values as a V2 binary-extension request (JSON header, then the tensor), and
    the header that says where the JSON ends: what tritonclient sends by default."""
    raw = values(rows, 1).astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = tmp / f"body_{rows}.v2"
    path.write_bytes(head + raw)
    return path, f"Inference-Header-Content-Length: {len(head)}"


def v2_json_body(tmp: Path, rows: int) -> Path:
    """The same values as a V2 JSON request (values in `data`, the answer in JSON too)."""
    x = values(rows, 1)
    tensor = {"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": x.reshape(-1).tolist()}
    path = tmp / f"body_{rows}.v2.json"
    path.write_text(json.dumps({"inputs": [tensor]}))
    return path


def make_csv(path: Path, rows: int) -> None:
    """A one-column CSV (`x`) of `rows` random values, for /predict_file."""
    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        f.write(b"x\n")
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            x = rng.uniform(-1000, 1000, n).astype(np.float32)
            f.write(b"\n".join(x.astype("S")) + b"\n")
