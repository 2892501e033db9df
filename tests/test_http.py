"""The real `bentoml serve`, over real HTTP: every endpoint, every bad input."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException
from conftest import TEST_BATCH_MAX_SIZE, TEST_MAX_VALUES, BentoServer, run_train
from endpoint_checks import JSON, check_predict, check_predict_file_csv, check_predict_file_npy
from version_models import triple_model

PREDICT_ROUTES = ["/predict", "/predict_batched"]


@pytest.fixture(scope="module")
def http(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(server_url: str) -> bentoml.SyncHTTPClient:
    with bentoml.SyncHTTPClient(server_url, server_ready_timeout=30) as c:
        yield c


def assert_still_serving(http: httpx.Client) -> None:
    r = http.post("/predict", json={"x": [21.0]})
    assert r.status_code == 200 and r.json()["y"] == [42.0]


# --- the happy paths --------------------------------------------------------------------------


@pytest.mark.parametrize("route", PREDICT_ROUTES)
def test_predict_raw_http(http: httpx.Client, route: str, demo_tag: str) -> None:
    check_predict(http, route, demo_tag)


@pytest.mark.parametrize("route", PREDICT_ROUTES)
def test_rows_of_one_feature_and_order(http: httpx.Client, route: str) -> None:
    x = np.random.default_rng(0).uniform(-1e3, 1e3, size=1000).astype(np.float32)
    r = http.post(route, json={"x": [[float(v)] for v in x]})
    assert r.status_code == 200
    np.testing.assert_allclose(
        np.array(r.json()["y"], dtype=np.float32), 2 * x, rtol=1e-6, atol=1e-6
    )


def test_sync_http_client(client: bentoml.SyncHTTPClient, demo_tag: str, tmp_path: Path) -> None:
    assert client.predict(x=[1.0, 2.0, 3.5]) == {"y": [2.0, 4.0, 7.0], "model": demo_tag}
    assert client.predict_batched(x=[0.25]) == {"y": [0.5], "model": demo_tag}
    src = tmp_path / "in.csv"
    src.write_text("x\n1\n2.5\n")
    out = client.predict_file(file=src)
    assert Path(out).read_text().splitlines() == ["x,y", "1,2", "2.5,5"]
    with pytest.raises(BentoMLException, match="not a finite float32"):
        client.predict(x=[float("nan")])


def test_predict_file(http: httpx.Client) -> None:
    check_predict_file_csv(http)
    check_predict_file_npy(http, rows=1001)


def test_predict_binary(http: httpx.Client, demo_tag: str) -> None:
    x = np.random.default_rng(1).uniform(-1e3, 1e3, size=1000).astype("<f4")
    r = http.post(
        "/predict_binary", content=x.tobytes(), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-model"] == demo_tag and r.headers["x-shape"] == "1000,1"
    y = np.frombuffer(r.content, dtype="<f4")
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is empty"),
        (b"abcde", "not whole rows"),
        (np.array([1.0, np.nan], dtype="<f4").tobytes(), "x[1] = nan is not a finite float32"),
        (np.ones(TEST_MAX_VALUES + 1, dtype="<f4").tobytes(), "too many values"),
    ],
)
def test_bad_binary_gets_400(http: httpx.Client, body: bytes, message: str) -> None:
    r = http.post(
        "/predict_binary", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_metadata(http: httpx.Client, demo_tag: str, model_home: Path) -> None:
    meta = http.get("/metadata").json()
    name, version = demo_tag.split(":")
    assert meta["tag"] == demo_tag and meta["name"] == name and meta["version"] == version
    onnx_file = model_home / "models" / name / version / "model.onnx"
    import hashlib

    assert meta["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert meta["signature"]["inputs"][0]["name"] == "x"
    assert set(meta["metrics"]) >= {"mae", "rmse", "r2"}
    assert re.match(r"\d{4}-\d\d-\d\dT", meta["created_at"])


def test_bentoml_endpoints_keep_working(http: httpx.Client) -> None:
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    http.post("/predict", json={"x": [1.0]})
    metrics = http.get("/metrics").text
    assert "bentoml_service_request_total" in metrics or "request_total" in metrics


def test_request_metrics_are_labelled_by_route_not_by_the_path_sent(http: httpx.Client) -> None:
    """Paths a client makes up don't become series of their own: a route's template, or
    `unmatched` (BentoML labelled the raw path: unbounded label cardinality)."""
    for path in ("/made-up-1", "/made-up-2", "/v2/models/made-up-3/infer"):
        http.post(path, json={"x": [1.0]})
    http.post("/predict", json={"x": [1.0]})
    http.post("/predict", json={"x": "not numbers"})
    metrics = http.get("/metrics").text
    assert "made-up" not in metrics
    total = r'bentoml_service_request_total\{endpoint="%s",http_response_code="%d"[^}]*\} (\S+)'
    for endpoint, status in (
        ("unmatched", 404),
        ("/v2/models/{name}/infer", 404),
        ("/predict", 200),
        ("/predict", 400),
    ):
        found = re.search(total % (re.escape(endpoint), status), metrics)
        assert found and float(found[1]) >= 1, (endpoint, status)
    duration = 'bentoml_service_request_duration_seconds_count{endpoint="/predict"'
    assert duration in metrics
    assert 'bentoml_service_request_in_progress{endpoint="/predict"' in metrics


def test_one_api_document_lists_every_route_with_its_schemas(http: httpx.Client) -> None:
    spec = http.get("/docs.json").json()
    v2 = "/v2/models/{name}"
    routes = {
        "/predict": "post",
        "/predict_batched": "post",
        "/predict_file": "post",
        "/predict_binary": "post",
        "/predict_image": "post",
        "/metadata": "get",
        "/v2": "get",
        "/v2/health/live": "get",
        "/v2/health/ready": "get",
        v2: "get",
        f"{v2}/ready": "get",
        f"{v2}/infer": "post",
        f"{v2}/versions/{{version}}": "get",
        f"{v2}/versions/{{version}}/ready": "get",
        f"{v2}/versions/{{version}}/infer": "post",
    }
    for path, method in routes.items():
        assert method in spec["paths"].get(path, {}), f"{method.upper()} {path} is not documented"
    schemas = spec["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("PredictRequest"))
    assert request["required"] == ["x"] and "FP32" in request["properties"]["x"]["description"]
    versioned = spec["paths"][f"{v2}/versions/{{version}}/infer"]["post"]
    assert [p["name"] for p in versioned["parameters"]] == ["name", "version"]
    infer = spec["paths"][f"{v2}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    assert "inputs" in body["application/json"]["schema"]["properties"]
    binary = spec["paths"]["/predict_binary"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in binary


# --- bad input: always a 4xx that says what was wrong, and the server keeps serving -----------

BAD_JSON_BODIES = [
    ('{"x": ["a", "b"]}', "valid number"),
    ('{"x": [{"nested": [1, {"junk": true}]}]}', "valid number"),
    ('{"x": [[1.0, 2.0], [3.0]]}', "ragged rows"),
    ('{"x": [NaN]}', "not a finite float32"),
    ('{"x": [Infinity, 1]}', "not a finite float32"),
    ('{"x": [-Infinity]}', "not a finite float32"),
    ('{"x": [3.5e38]}', "not a finite float32"),
    ('{"x": []}', "x is empty"),
    ('{"x": null}', "valid array"),
    ("{}", "Field required"),
    ('{"y": [1]}', "Field required"),
    ("", "Field required"),
    ('{"x": [1.0, 2.0', "Invalid JSON"),
    ("not json at all", "Invalid JSON"),
    ("[1, 2, 3]", "Input should be an object"),
    ('{"x": [[1.0, 2.0]]}', "the model takes 1 feature(s) per row, got 2"),
]


@pytest.mark.parametrize("route", PREDICT_ROUTES)
@pytest.mark.parametrize(("body", "message"), BAD_JSON_BODIES)
def test_bad_json_gets_400_with_reason(
    http: httpx.Client, route: str, body: str, message: str
) -> None:
    r = http.post(route, content=body.encode(), headers=JSON)
    assert r.status_code == 400, r.text
    assert message in r.text


@pytest.mark.parametrize("route", PREDICT_ROUTES)
def test_more_values_than_the_maximum(http: httpx.Client, route: str) -> None:
    r = http.post(route, json={"x": [1.0] * (TEST_MAX_VALUES + 1)})
    assert r.status_code == 400
    assert f"too many values: {TEST_MAX_VALUES + 1} > MAX_VALUES={TEST_MAX_VALUES}" in r.text
    assert http.post("/predict", json={"x": [1.0] * TEST_MAX_VALUES}).status_code == 200


def test_batched_requests_fit_in_one_batch(http: httpx.Client) -> None:
    # BentoML would split a larger request across batches; refuse it with a pointer instead.
    assert http.post("/predict_batched", json={"x": [1.0] * TEST_BATCH_MAX_SIZE}).status_code == 200
    r = http.post("/predict_batched", json={"x": [1.0] * (TEST_BATCH_MAX_SIZE + 1)})
    assert r.status_code == 400
    assert f"{TEST_BATCH_MAX_SIZE + 1} > BATCH_MAX_SIZE={TEST_BATCH_MAX_SIZE}" in r.text


@pytest.mark.parametrize("route", [*PREDICT_ROUTES, "/predict_file", "/predict_binary"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_gets_415(
    http: httpx.Client, route: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post(route, content=b'{"x": [1.0]}', headers=headers)
    assert r.status_code == 415
    assert "Content-Type must be" in r.json()["error"]


def test_json_to_the_file_api_gets_415(http: httpx.Client) -> None:
    r = http.post("/predict_file", json={"x": [1.0]})
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", b"a,b\n1,2\n", "no ['x'] column"),
        ("a.csv", b"x\n1\nhello\n", "x = 'hello' is not a number"),
        ("a.csv", b"", "empty"),
        ("a.csv", b"x\n", "no rows"),
        ("a.csv", b"x\n1e39\n", "not a finite float32"),
        ("a.npy", b"\x93NUMPY garbage", "not a readable .npy file"),
    ],
)
def test_bad_files_get_400_with_reason(
    http: httpx.Client, name: str, content: bytes, message: str
) -> None:
    r = http.post("/predict_file", files={"file": (name, content, "application/octet-stream")})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_file_field_missing_gets_400(http: httpx.Client) -> None:
    r = http.post("/predict_file", files={"other": ("a.csv", b"x\n1\n", "text/csv")})
    assert r.status_code == 400
    assert "file" in r.text


def test_server_survives_all_of_the_above(http: httpx.Client) -> None:
    for body, _ in BAD_JSON_BODIES:
        http.post("/predict", content=body.encode(), headers=JSON)
    assert_still_serving(http)


# --- adaptive batching: requests that arrive together each get their own answer ---------------


def test_concurrent_batched_requests_each_get_their_own_answer(
    http: httpx.Client, server_url: str
) -> None:
    def batches_run() -> float:
        metrics = http.get("/metrics").text
        found = re.search(
            r'adaptive_batch_size_count\{[^}]*"predict_batched"[^}]*\} (\S+)', metrics
        )
        return float(found.group(1)) if found else 0.0

    before = batches_run()
    n = 600

    def call(i: int) -> tuple[int, int, dict, list[float]]:
        x = [float(i), i + 0.5] if i % 3 else [float(i)]
        with httpx.Client(base_url=server_url, timeout=60) as c:
            r = c.post("/predict_batched", json={"x": x})
        return i, r.status_code, r.json(), x

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(call, range(n)))
    for _i, status, body, x in results:
        assert status == 200, body
        np.testing.assert_allclose(body["y"], [2 * v for v in x], rtol=1e-6, atol=1e-6)
    # Fewer model calls than requests: requests that arrived together were batched.
    assert 0 < batches_run() - before < n
    assert_still_serving(http)


# --- choosing the model: your own ONNX file, by name or tag, without editing code -------------


def test_serve_an_imported_user_model_by_tag(tmp_path: Path, model_home: Path) -> None:
    triple_model(tmp_path / "triple.onnx", ("inp", "out"))  # names of its own, not the demo's
    imported = run_train(model_home, "--onnx", str(tmp_path / "triple.onnx"), "--name", "triple")
    assert imported.returncode == 0, imported.stderr
    tag = imported.stdout.strip()
    server = BentoServer(model_home, tmp_path / "serve.log", MODEL_TAG=tag)
    try:
        server.wait_ready(timeout=60)
        r = httpx.post(f"{server.url}/predict", json={"x": [1.0, 2.0]})
        assert r.json() == {"y": [3.0, 6.0], "model": tag}
        assert httpx.get(f"{server.url}/metadata").json()["signature"]["inputs"][0]["name"] == "inp"
    finally:
        server.stop()


def test_hash_mismatch_refuses_to_start(tmp_path: Path, model_home: Path, demo_tag: str) -> None:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(model_home, home)
    name, version = demo_tag.split(":")
    with open(home / "models" / name / version / "model.onnx", "ab") as f:
        f.write(b"tampered")
    server = BentoServer(home, tmp_path / "serve.log")
    try:
        with pytest.raises(RuntimeError, match="exited") as info:
            server.wait_ready(timeout=60)
    finally:
        server.stop()
    message = str(info.value)
    assert f"refusing to serve {demo_tag}" in message
    assert re.search(
        r"has SHA-256 [0-9a-f]{64}, but the model store recorded [0-9a-f]{64}", message
    )


def test_docs_leads_to_the_api_page(http: httpx.Client) -> None:
    r = http.get("/docs")
    assert r.status_code == 307 and r.headers["location"] == "/"
    page = http.get("/docs", follow_redirects=True)
    assert page.status_code == 200 and "swagger" in page.text.lower()
