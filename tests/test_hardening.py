"""Hardening, against a real server: body limits and the memory they bound, spooled files
removed, API keys, and a model that can't run refused once."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, BentoServer, PeakRss, running

MIB = 1 << 20
FILE_LIMIT = 4 * MIB
IMAGE_LIMIT = 64 * 1024
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def limited(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """The demo with the default MAX_VALUES (so the default JSON and binary limits), small
    file and image limits, and a temporary directory of its own to look into."""
    tmp = tmp_path_factory.mktemp("limited")
    (tmp / "tmp").mkdir()
    limits = {"MAX_FILE_BYTES": str(FILE_LIMIT), "MAX_IMAGE_BYTES": str(IMAGE_LIMIT)}
    with running(model_home, tmp / "serve.log", TMPDIR=str(tmp / "tmp"), **limits) as server:
        yield server


def post(
    server: BentoServer, path: str, body: bytes | Iterator[bytes], content_type: str
) -> tuple[int, dict, float]:
    """POST with http.client (which sends a generator chunked): status, JSON body, seconds."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        chunked = not isinstance(body, bytes)
        conn.request(
            "POST", path, body=body, headers={"Content-Type": content_type}, encode_chunked=chunked
        )
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}"), time.perf_counter() - started
    finally:
        conn.close()


def json_limit(server: BentoServer) -> int:
    # The default the server derived from MAX_VALUES=1,000,000 (onnx_serving/config.py).
    return 26 * 1_000_000 + MIB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_json_body_is_refused_at_once_in_bounded_memory(
    limited: BentoServer, chunked: bool
) -> None:
    # Long numbers, so that the byte limit is met before the count of values (BodyBudget).
    body = b'{"x": [' + b"1.500000000000000000000001, " * 11_000_000 + b"1.5]}"
    parts = (body[i : i + MIB] for i in range(0, len(body), MIB)) if chunked else body
    with PeakRss(limited) as rss:
        status, answer, seconds = post(limited, "/predict", parts, "application/json")
    assert status == 413
    assert "at most 27,048,576 bytes (MAX_JSON_BYTES)" in answer["error"]
    # Content-Length: refused before a byte is read. Chunked: as soon as the count passes.
    assert seconds < (1.0 if not chunked else 10.0)
    assert rss.growth_mb < 2 * json_limit(limited) / MIB + 100, rss.growth_mb
    assert httpx.post(f"{limited.url}/predict", json={"x": [2.0]}).json()["y"] == [4.0]


def test_the_largest_json_body_allowed_stays_within_twice_the_limit_plus_100_mb(
    limited: BentoServer,
) -> None:
    # 1,000,000 values (MAX_VALUES) in their longest usual form: about 25 MB of JSON.
    values = np.random.default_rng(0).uniform(-1, 1, 1_000_000).astype(np.float32) * np.float32(
        1e-5
    )
    body = json.dumps({"x": values.astype(np.float64).tolist()}).encode()
    assert len(body) <= json_limit(limited)
    with PeakRss(limited) as rss:
        status, answer, _ = post(limited, "/predict", body, "application/json")
    assert status == 200 and len(answer["y"]) == 1_000_000
    per_byte = rss.growth_mb * MIB / len(body)
    print(
        f"\npeak RSS growth {rss.growth_mb:.0f} MB for a {len(body) / MIB:.0f} MB JSON body "
        f"({per_byte:.1f} bytes per body byte)"
    )
    assert rss.growth_mb < 2 * json_limit(limited) / MIB + 100


def test_binary_file_and_image_limits(limited: BentoServer) -> None:
    status, answer, _ = post(
        limited, "/predict_binary", b"\0" * (8_000_000 + 2 * MIB), "application/octet-stream"
    )
    assert status == 413 and "(MAX_BINARY_BYTES)" in answer["error"]
    big_csv = b"x\n" + b"1.0\n" * (FILE_LIMIT // 4 + 1)
    r = httpx.post(f"{limited.url}/predict_file", files={"file": ("a.csv", big_csv, "text/csv")})
    assert (
        r.status_code == 413
        and f"at most {FILE_LIMIT:,} bytes (MAX_FILE_BYTES)" in r.json()["error"]
    )
    r = httpx.post(
        f"{limited.url}/predict_image", files={"file": ("a.png", b"\0" * IMAGE_LIMIT, "image/png")}
    )
    assert r.status_code == 413 and "(MAX_IMAGE_BYTES)" in r.json()["error"]


def test_spooled_upload_files_are_removed(limited: BentoServer) -> None:
    tmp = Path(limited.log_path).parent / "tmp"
    csv = b"x\n" + b"1.0\n" * 200_000  # 800 kB: spooled to disk by the multipart parser
    buf = io.BytesIO()
    np.save(buf, np.ones(100_000, dtype=np.float32))
    uploads = [("a.csv", csv), ("a.npy", buf.getvalue()), ("bad.csv", b"x\n1\nabc\n")]
    before = {p for p in tmp.rglob("*") if p.is_file()}  # what the server made at start
    for name, content in uploads:
        httpx.post(
            f"{limited.url}/predict_file",
            files={"file": (name, content, "application/octet-stream")},
        )
    # BentoML empties a request's temp folder after the last byte of the answer has been
    # sent, so the client can see the answer a moment before the cleanup runs.
    deadline = time.monotonic() + 5
    while left := [p for p in tmp.rglob("*") if p.is_file() and p not in before]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == [], f"files left behind: {left}"


# --- API keys -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    log = tmp_path_factory.mktemp("keyed") / "serve.log"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    with running(model_home, log, API_KEY_SHA256=digest, ACCESS_LOG="1") as server:
        yield server


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
    ids=["none", "wrong-header-key", "wrong-bearer", "not-bearer"],
)
def test_requests_without_the_key_get_401(keyed: BentoServer, headers: dict) -> None:
    for method, path in [
        ("POST", "/predict"),
        ("GET", "/metadata"),
        ("GET", "/v2/models/linear-2x"),
    ]:
        r = httpx.request(method, keyed.url + path, json={"x": [1.0]}, headers=headers)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}])
def test_the_key_opens_every_route(keyed: BentoServer, headers: dict) -> None:
    assert httpx.post(f"{keyed.url}/predict", json={"x": [1.0]}, headers=headers).json()["y"] == [
        2.0
    ]
    assert httpx.get(f"{keyed.url}/metadata", headers=headers).status_code == 200
    v2 = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    assert (
        httpx.post(f"{keyed.url}/v2/models/linear-2x/infer", json=v2, headers=headers).status_code
        == 200
    )


def test_probes_metrics_and_docs_stay_open_and_the_key_is_never_logged(keyed: BentoServer) -> None:
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs.json",
    ]:
        assert httpx.get(keyed.url + path).status_code == 200, path
    httpx.post(f"{keyed.url}/predict", json={"x": [1.0]}, headers={"X-API-Key": KEY})
    assert KEY not in keyed.log_tail(10**7)


# --- a model that can't run ----------------------------------------------------------------

# Stores a model whose signature says it takes one row of two values, which it can't run
# (Reshape to [3]): what an old store, a hand-made entry or a changed runtime can leave.
BROKEN_MODEL = """
import sys
import bentoml
from onnx import TensorProto, helper
from onnx_serving.model import store as model_store
from onnx_serving.model import signature
from onnx_serving.model.signature import TensorSpec
graph = helper.make_graph(
    [helper.make_node("Reshape", ["a", "shape"], ["c"])], "broken",
    [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])],
    [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 3])],
    [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
data = model.SerializeToString()
sig = signature.Signature(
    inputs=(TensorSpec("a", "tensor(float)", ("N", 2)),),
    outputs=(TensorSpec("c", "tensor(float)", ("N", 3)),),
)
meta = {"sha256": model_store.sha256_bytes(data), "signature": sig.to_metadata()}
with bentoml.models.create("broken:v1", metadata=meta) as ref:
    open(ref.path_of(model_store.ONNX_FILENAME), "wb").write(data)
"""


def test_a_model_that_cannot_run_stops_serve_once_with_the_reason(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "BENTOML_HOME": str(home), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", BROKEN_MODEL], env=env, check=True, timeout=120)
    server = BentoServer(home, tmp_path / "serve.log", MODEL_TAG="broken:v1")
    try:
        with pytest.raises(RuntimeError, match="exited") as info:
            server.wait_ready(timeout=60)
        assert server.proc.returncode != 0
    finally:
        server.stop()
    log = str(info.value)
    assert "broken:v1 loads, but fails on the smallest input it declares ({'a': [1, 2]})" in log
    # Refused in `bentoml serve` itself: no worker was started, let alone restarted.
    assert "Service onnx-serving initialized" not in server.log_path.read_text()
