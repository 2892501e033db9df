"""Endpoint checks shared by the `bentoml serve` tests and the Docker image tests."""

from __future__ import annotations

import io

import httpx
import numpy as np

JSON = {"Content-Type": "application/json"}


def check_predict(http: httpx.Client, route: str, tag: str) -> None:
    r = http.post(route, json={"x": [1.0, 2.0, 3.5]}, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"y": [2.0, 4.0, 7.0], "model": tag}


def check_predict_file_csv(http: httpx.Client) -> None:
    """Other columns kept as sent, a `y` column added, rows in order."""
    csv = b"id,x,label\n1,0.5,a\n2,-3,b\n3,1e3,c\n"
    r = http.post("/predict_file", files={"file": ("data.csv", csv, "text/csv")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines() == ["id,x,label,y", "1,0.5,a,1", "2,-3,b,-6", "3,1e3,c,2000"]


def check_predict_file_npy(http: httpx.Client, rows: int) -> None:
    x = np.linspace(-5, 5, rows, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    r = http.post("/predict_file", files={"file": ("x.npy", buf.getvalue(), "application/x-npy")})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), 2 * x, rtol=1e-6, atol=1e-6)
