"""The demo model is exactly y = 2x in float32, through every route (compared with ==)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from train_and_save import exactness_probe

JSON = {"Content-Type": "application/json"}
# Zeros of both signs, subnormals, tiny and huge values (up to half the float32 maximum),
# and about 4,000 random float32 bit patterns: the same probe train_and_save.py checks.
X = exactness_probe()


@pytest.fixture(scope="module")
def http(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def assert_exactly_2x(y: np.ndarray, x: np.ndarray = X) -> None:
    assert y.dtype == np.float32 and y.shape == x.shape
    want = 2 * x
    mismatch = np.flatnonzero(y != want)
    assert mismatch.size == 0, f"x={x[mismatch[:5]]} gave {y[mismatch[:5]]}, want {want[:5]}"
    # == treats -0.0 and 0.0 as equal; the sign of zero comes through too.
    assert np.array_equal(np.signbit(y), np.signbit(want))


def test_zero_gives_zero(http: httpx.Client) -> None:
    r = http.post("/predict", json={"x": [0.0]}, headers=JSON)
    assert r.json()["y"] == [0.0]


@pytest.mark.parametrize("route", ["/predict", "/predict_batched"])
def test_json_routes(http: httpx.Client, route: str) -> None:
    # JSON carries each float32 as the shortest float64 text that reads back as it.
    for part in np.array_split(X, 4):  # /predict_batched takes at most BATCH_MAX_SIZE rows
        r = http.post(route, json={"x": part.astype(np.float64).tolist()}, headers=JSON)
        assert r.status_code == 200, r.text
        assert_exactly_2x(np.array(r.json()["y"], dtype=np.float32), part)


def test_binary_route(http: httpx.Client) -> None:
    r = http.post(
        "/predict_binary",
        content=X.astype("<f4").tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert_exactly_2x(np.frombuffer(r.content, dtype="<f4").astype(np.float32))


def test_file_route_npy(http: httpx.Client) -> None:
    buf = io.BytesIO()
    np.save(buf, X)
    r = http.post("/predict_file", files={"file": ("x.npy", buf.getvalue(), "application/x-npy")})
    assert r.status_code == 200, r.text
    assert_exactly_2x(np.load(io.BytesIO(r.content)).reshape(-1))


def test_file_route_csv(http: httpx.Client) -> None:
    # %.9g both ways: nine significant digits always read back as the same float32.
    csv = "x\n" + "".join(f"{v:.9g}\n" for v in X.tolist())
    r = http.post("/predict_file", files={"file": ("x.csv", csv.encode(), "text/csv")})
    assert r.status_code == 200, r.text
    rows = [line.split(",") for line in r.text.splitlines()[1:]]
    x_back = np.array([float(x) for x, _ in rows], dtype=np.float32)
    assert np.array_equal(x_back.view(np.uint32), X.view(np.uint32))
    assert_exactly_2x(np.array([float(y) for _, y in rows], dtype=np.float32))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_route(server_url: str, demo_tag: str, binary: bool) -> None:
    import tritonclient.http as triton

    name, version = demo_tag.split(":")
    x = triton.InferInput("x", [len(X), 1], "FP32")
    x.set_data_from_numpy(X.reshape(-1, 1), binary_data=binary)
    wanted = [triton.InferRequestedOutput("y", binary_data=binary)]
    client = triton.InferenceServerClient(server_url.removeprefix("http://"))
    try:
        result = client.infer(name, [x], model_version=version, outputs=wanted)
    finally:
        client.close()
    assert_exactly_2x(result.as_numpy("y").reshape(-1))
