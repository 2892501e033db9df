"""The Open Inference Protocol (KServe V2), driven by tritonclient[http] unchanged, in its
binary and JSON modes, against every fixture model and the demo model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fixture_models import CASES, assert_output, model_name
from tritonclient.utils import InferenceServerException


def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def v2_inputs(case: str, metadata: dict, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for spec in metadata["inputs"]:
        dtype = triton.triton_to_np_dtype(spec["datatype"])
        values = np.array(CASES[case]["inputs"][spec["name"]], dtype=dtype)
        inp = triton.InferInput(spec["name"], list(values.shape), spec["datatype"])
        inp.set_data_from_numpy(values, binary_data=binary)
        inputs.append(inp)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("case", list(CASES))
def test_tritonclient_infer(fixture_servers: dict[str, str], case: str, binary: bool) -> None:
    name = model_name(case)
    c = client(fixture_servers[case])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    metadata = c.get_model_metadata(name)
    assert sorted(i["name"] for i in metadata["inputs"]) == sorted(CASES[case]["inputs"])
    outputs = [
        triton.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]
    ]
    result = c.infer(name, v2_inputs(case, metadata, binary), outputs=outputs)
    for output in CASES[case]["outputs"]:
        got = result.as_numpy(output)
        if got.dtype.kind == "O":
            got = np.array(
                [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)]
            ).reshape(got.shape)
        assert_output(got, case, output)
    c.close()


def test_versioned_routes_and_metadata(fixture_servers: dict[str, str]) -> None:
    url = fixture_servers["torch_two_inputs"]
    meta = httpx.get(f"{url}/v2/models/torch-two-inputs").json()
    (version,) = meta["versions"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
    ]
    c = client(url)
    assert c.get_model_metadata("torch-two-inputs", version)["versions"] == [version]
    assert c.is_model_ready("torch-two-inputs", version)
    assert not c.is_model_ready("torch-two-inputs", "sha256-0000000000000000")
    c.close()


def test_health_bodies_are_what_kserve_reads(server_url: str, demo_tag: str) -> None:
    name, _ = demo_tag.split(":")
    assert httpx.get(f"{server_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server_url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server_url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    server = httpx.get(f"{server_url}/v2").json()
    assert server["name"] == "onnx-serving" and "binary_tensor_data" in server["extensions"]


def test_demo_model_over_v2_is_exactly_2x(server_url: str, demo_tag: str) -> None:
    name, version = demo_tag.split(":")
    x = np.array([[0.0], [0.5], [-3.25], [1e-40]], dtype=np.float32)
    for binary in (True, False):
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = client(server_url).infer(name, [inp], model_version=version)
        assert result.get_response()["model_version"] == version
        np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


# --- errors: V2's {"error": ...}, a 4xx, and tritonclient raises with the message -------------


def infer_raw(
    url: str, body: bytes, headers: dict | None = None, model: str = "linear-2x"
) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers or {})


def header(inputs: list, **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


X1 = {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (header([{**X1, "datatype": "FP64"}]), None, 400, "is FP64; the model takes FP32"),
        (header([{**X1, "data": [1.0]}]), None, 400, "holds 2 values, data has 1"),
        (header([{**X1, "data": ["a", "b"]}]), None, 400, "data must hold FP32 values"),
        (header([{**X1, "data": [float("nan"), 1.0]}]), None, 400, "not a finite float32"),
        (header([{**X1, "name": "z"}]), None, 400, "the model takes inputs ['x']"),
        (header([{**X1, "shape": [2, 2], "data": [1, 2, 3, 4]}]), None, 400, "takes 1 feature(s)"),
        (header([{**X1, "datatype": "FP8"}]), None, 400, "is FP8; the model takes FP32"),
        (header([X1], outputs=[{"name": "nope"}]), None, 400, "unknown output(s) ['nope']"),
        (b'{"inputs": [', None, 400, "invalid inference request"),
        (b"{}", None, 400, "inputs: Field required"),
        (header([X1]), {"Inference-Header-Content-Length": "abc"}, 400, "must be an integer"),
        (header([X1]), {"Inference-Header-Content-Length": "99999"}, 400, "the body has"),
    ],
)
def test_bad_requests(
    server_url: str, body: bytes, headers: dict | None, status: int, message: str
) -> None:
    r = infer_raw(server_url, body, headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_binary_data_shorter_than_it_says(server_url: str) -> None:
    x = {"name": "x", "shape": [2, 1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    head = header([x])
    r = infer_raw(server_url, head + b"\0" * 4, {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary_data_size 8 runs past the body" in r.json()["error"]


def test_unknown_model_is_404(server_url: str) -> None:
    r = infer_raw(server_url, header([X1]), model="nope")
    assert r.status_code == 404 and "model 'nope' is not served" in r.json()["error"]
    assert httpx.get(f"{server_url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{server_url}/v2/models/nope/ready").status_code == 404


def test_tritonclient_raises_with_the_message(server_url: str, demo_tag: str) -> None:
    inp = triton.InferInput("x", [1, 1], "FP64")
    inp.set_data_from_numpy(np.array([[1.0]]))
    with pytest.raises(InferenceServerException, match="the model takes FP32"):
        client(server_url).infer(demo_tag.split(":")[0], [inp])
