"""Fuzzing the real server: properties that hold for every input (hypothesis), and the
service's own OpenAPI document driven by schemathesis.

Bounded for `make test` (the `ci` profile); `make fuzz` runs the same tests far longer
(HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import io
import json
import os
import struct

import grpc
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=SLOW)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=SLOW)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

JSON = {"Content-Type": "application/json"}
HALF_MAX = float(np.finfo(np.float32).max) / 2
F32 = st.floats(
    width=32, allow_nan=False, allow_infinity=False, min_value=-HALF_MAX, max_value=HALF_MAX
)


@pytest.fixture(scope="module")
def http(server_url: str) -> httpx.Client:
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


def assert_4xx_with_reason(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    assert r.json()["error"]


# --- y = 2x for every finite float32, through every route ---------------------------------


@given(st.lists(F32, min_size=1, max_size=40))
def test_every_route_answers_exactly_2x(http: httpx.Client, values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    want = (2 * x).tolist()
    for route in ("/predict", "/predict_batched"):
        r = http.post(route, content=json.dumps({"x": x.tolist()}), headers=JSON)
        assert r.json()["y"] == want, route
    r = http.post(
        "/predict_binary", content=x.tobytes(), headers={"Content-Type": "application/octet-stream"}
    )
    assert np.frombuffer(r.content, dtype="<f4").tolist() == want
    buf = io.BytesIO()
    np.save(buf, x)
    r = http.post("/predict_file", files={"file": ("x.npy", buf.getvalue(), "application/x-npy")})
    assert np.load(io.BytesIO(r.content)).tolist() == want
    csv = "x\n" + "".join(f"{v:.9g}\n" for v in x.tolist())
    r = http.post("/predict_file", files={"file": ("x.csv", csv.encode(), "text/csv")})
    assert [np.float32(line.split(",")[1]) for line in r.text.splitlines()[1:]] == want
    v2 = {"inputs": [{"name": "x", "shape": [len(x), 1], "datatype": "FP32", "data": x.tolist()}]}
    r = http.post("/v2/models/linear-2x/infer", content=json.dumps(v2), headers=JSON)
    assert r.json()["outputs"][0]["data"] == want


# --- malformed bodies: a 4xx that says why, never a 5xx -----------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


def nested(depth: int) -> str:
    return '{"x": ' + "[" * depth + "1" + "]" * depth + "}"


MALFORMED = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)),
    JSON_VALUES.map(lambda v: json.dumps({"x": v}, allow_nan=True)),
    st.integers(2, 5000).map(nested),  # deep nesting
    st.sampled_from(
        [
            '{"x": [1e999999]}',
            '{"x": [123456789012345678901234567890]}',
            '{"x": [NaN]}',
            '{"x": [Infinity]}',
            '{"x": [-Infinity, 1]}',
            '{"x": [1]}' * 3,
        ]
    ),
    st.tuples(st.just('{"x": [1.5, 2.5, [3]]}'), st.integers(0, 20)).map(lambda t: t[0][: t[1]]),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "application/json; charset=latin-1",
    ]
)


@given(MALFORMED, CONTENT_TYPES)
def test_malformed_json_gets_4xx(http: httpx.Client, body: str | bytes, content_type: str) -> None:
    if isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": content_type} if content_type else {}
    for route in ("/predict", "/predict_batched"):
        r = http.post(route, content=body, headers=headers)
        if r.status_code == 200:  # a fuzzed body can be valid: then it must be right
            x = np.asarray(json.loads(body)["x"], dtype=np.float32).reshape(-1)
            assert r.json()["y"] == (2 * x).tolist(), body
            continue
        assert_4xx_with_reason(r)


CSV_CELLS = st.text(alphabet=st.sampled_from('x,y"\r\n 0123456789.eE-+nanif\ufeff'), max_size=80)


@given(
    st.one_of(
        CSV_CELLS.map(lambda t: ("x\n" + t).encode()),
        CSV_CELLS.map(str.encode),
        st.binary(max_size=100),
    )
)
def test_malformed_csv_gets_4xx(http: httpx.Client, content: bytes) -> None:
    r = http.post("/predict_file", files={"file": ("f.csv", content, "text/csv")})
    if r.status_code != 200:
        assert_4xx_with_reason(r)


def npy_header(descr: str, shape: str, fortran: str = "False") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}".encode()
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@given(
    st.sampled_from(["<f4", "<f8", "<i8", "|b1", "<U3", "|O", "<c8", ">f4", "nonsense"]),
    st.sampled_from(
        ["(3,)", "(3, 1)", "(1, 2, 3)", "()", "(0,)", "(-1,)", "(99999999999,)", "[3]", "(3"]
    ),
    st.sampled_from(["False", "True", "maybe"]),
    st.binary(max_size=64),
)
def test_malformed_npy_gets_4xx(
    http: httpx.Client, descr: str, shape: str, fortran: str, data: bytes
) -> None:
    content = npy_header(descr, shape, fortran) + data
    r = http.post("/predict_file", files={"file": ("f.npy", content, "application/x-npy")})
    if r.status_code != 200:
        assert_4xx_with_reason(r)


V2_TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", ""]),
        "shape": st.lists(st.integers(-2, 5), max_size=3),
        "datatype": st.sampled_from(["FP32", "FP64", "INT8", "BYTES", "BOOL", "XX"]),
    },
    optional={
        "data": st.lists(
            st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.booleans()), max_size=6
        ),
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-5, 40)}),
    },
)


@given(
    st.lists(V2_TENSORS, max_size=3),
    st.one_of(st.none(), st.integers(-3, 400).map(str), st.text("0123456789abc-+.", max_size=4)),
    st.binary(max_size=40),
)
def test_malformed_v2_requests_get_4xx(
    http: httpx.Client, inputs: list, header_length: str | None, binary: bytes
) -> None:
    head = json.dumps({"inputs": inputs}, allow_nan=True).encode()
    headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
    r = http.post("/v2/models/linear-2x/infer", content=head + binary, headers=headers)
    if r.status_code != 200:
        assert_4xx_with_reason(r)


# Shapes and parameters as a client may choose them: any rank, huge or negative dimensions,
# nested parameters; the service bounds them before it allocates anything.
HUGE_SHAPES = st.lists(
    st.one_of(st.integers(-3, 4), st.sampled_from([2**31, 2**53, 2**63, 2**64])), max_size=70
)
PARAMETERS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)


@given(HUGE_SHAPES, PARAMETERS, PARAMETERS, st.booleans())
def test_v2_shapes_and_parameters_get_4xx(
    http: httpx.Client, shape: list, params: dict, tensor_params: dict, binary: bool
) -> None:
    tensor: dict = {"name": "x", "shape": shape, "datatype": "FP32", "parameters": tensor_params}
    if binary:
        tensor["parameters"] = {**tensor_params, "binary_data_size": 4}
    else:
        tensor["data"] = [1.0]
    head = json.dumps({"inputs": [tensor], "parameters": params}, allow_nan=True).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if binary else JSON
    body = head + (b"\0\0\0\0" if binary else b"")
    r = http.post("/v2/models/linear-2x/infer", content=body, headers=headers)
    if r.status_code != 200:
        assert_4xx_with_reason(r)


# --- V2 over gRPC: any message gets an answer or a client error, never UNKNOWN or INTERNAL --

GRPC_CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"}
GRPC_DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT64", "BOOL", "BYTES"]
GRPC_TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y", "", "\u00e9"]),
        "datatype": st.sampled_from([*GRPC_DATATYPES, "fp32", "", "INT128"]),
        "shape": st.lists(
            st.one_of(st.integers(-3, 4), st.sampled_from([2**31, 2**53, 2**63 - 1, -(2**63)])),
            max_size=20,
        ),
        "fp32": st.lists(st.floats(width=32), max_size=6),
        "int64": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
        "bytes": st.lists(st.binary(max_size=6), max_size=4),
    }
)


def grpc_request(model: str, version: str, tensors: list, raw: list[bytes] | None) -> object:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for t in tensors:
        tensor = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if raw is None:
            tensor.contents.fp32_contents.extend(t["fp32"])
            tensor.contents.int64_contents.extend(t["int64"])
            tensor.contents.bytes_contents.extend(t["bytes"])
    if raw is not None:
        request.raw_input_contents.extend(raw)
    return request


@given(
    st.sampled_from(["linear-2x", "", "nope"]),
    st.sampled_from(["", "1", "latest"]),
    st.lists(GRPC_TENSORS, max_size=3),
    st.one_of(st.none(), st.lists(st.binary(max_size=24), max_size=3)),
)
def test_any_grpc_infer_request_gets_an_answer_or_a_client_error(
    grpc_address: str, model: str, version: str, tensors: list, raw: list[bytes] | None
) -> None:
    channel = grpc.insecure_channel(grpc_address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ModelInfer(grpc_request(model, version, tensors, raw), timeout=30)
    except grpc.RpcError as exc:
        assert exc.code().name in GRPC_CLIENT_ERRORS, (exc.code(), exc.details())
        assert exc.details()
    finally:
        channel.close()


@given(st.binary(max_size=64))
def test_any_grpc_message_bytes_get_an_answer_or_a_client_error(
    grpc_address: str, message: bytes
) -> None:
    channel = grpc.insecure_channel(grpc_address)
    try:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code().name in GRPC_CLIENT_ERRORS, (exc.code(), exc.details())
    finally:
        channel.close()


@given(
    st.text(max_size=400),
    st.sampled_from([b"x\n1\n", b"\x93NUMPY junk", b""]),
)
def test_any_multipart_filename_gets_an_answer(
    http: httpx.Client, name: str, content: bytes
) -> None:
    r = http.post("/predict_file", files={"file": (name, content, "application/octet-stream")})
    if r.status_code != 200:
        assert_4xx_with_reason(r)


QUOTED = st.lists(
    st.text(alphabet=st.sampled_from('ab,"\r\n 1.5'), max_size=12).map(
        lambda t: '"' + t.replace('"', '""') + '"'
    ),
    min_size=1,
    max_size=4,
)


@given(st.lists(QUOTED, min_size=1, max_size=5))
def test_csv_quoting_gets_an_answer(http: httpx.Client, rows: list) -> None:
    content = "note,x\n" + "".join(f"{row[0]},1.5\n" for row in rows)
    r = http.post("/predict_file", files={"file": ("q.csv", content.encode(), "text/csv")})
    if r.status_code != 200:
        assert_4xx_with_reason(r)


# --- schemathesis: the OpenAPI document, for the demo and for a model of every type -------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]


@pytest.mark.parametrize("target", ["demo", "all_types"])
def test_openapi_document(target: str, server_url: str, fixture_servers: dict[str, str]) -> None:
    """Every operation, schemathesis's generated requests: no 5xx, and every response as
    documented (status, content type, body schema). (Its pytest plugin reads a private pytest
    attribute that pytest 9 dropped, so the operations run through `as_strategy`.)"""
    url = server_url if target == "demo" else fixture_servers["all_types"]
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=url, checks=CHECKS)

        check()
