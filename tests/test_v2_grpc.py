"""The Open Inference Protocol over gRPC, driven by tritonclient.grpc unchanged (raw
contents) and by Triton's own generated stubs (typed contents), against every fixture model
and the demo model, with the answers, errors and limits of V2 over REST."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from conftest import TEST_MAX_VALUES, BentoServer, running
from fixture_models import CASES, assert_output, model_name
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from harness.local_server import free_port

# InferTensorContents' field for each datatype, as the protocol's specification lists them.
TYPED = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def decoded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind != "O":
        return values
    flat = [v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1)]
    return np.array(flat).reshape(values.shape)


def stub(address: str) -> Any:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def case_values(case: str, name: str, datatype: str) -> np.ndarray:
    return np.array(CASES[case]["inputs"][name], dtype=triton_to_np_dtype(datatype))


@pytest.mark.parametrize("case", list(CASES))
def test_tritonclient_grpc_infers_raw_contents_as_rest_answers(
    fixture_servers: dict[str, str], fixture_grpc: dict[str, str], case: str
) -> None:
    name = model_name(case)
    client = tg.InferenceServerClient(fixture_grpc[case])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name, as_json=True)
    rest = httpx.get(f"{fixture_servers[case]}/v2/models/{name}").json()
    for key in ("inputs", "outputs"):
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[key]]
        assert got == [(t["name"], t["datatype"], t["shape"]) for t in rest[key]]
    assert metadata["versions"] == rest["versions"] and metadata["platform"] == rest["platform"]
    inputs = []
    for spec in metadata["inputs"]:
        values = case_values(case, spec["name"], spec["datatype"])
        inputs.append(tg.InferInput(spec["name"], list(values.shape), spec["datatype"]))
        inputs[-1].set_data_from_numpy(values)
    result = client.infer(name, inputs, request_id="r-1")
    assert result.get_response().id == "r-1"
    for output in CASES[case]["outputs"]:
        assert_output(decoded(result.as_numpy(output)), case, output)
    client.close()


@pytest.mark.parametrize("case", list(CASES))
def test_typed_contents_in_typed_contents_out(fixture_grpc: dict[str, str], case: str) -> None:
    """Each input in the repeated field of its datatype; FP16 has none, and is refused with
    the reason (the protocol: FP16 only as raw contents)."""
    name = model_name(case)
    call = stub(fixture_grpc[case])
    metadata = call.ModelMetadata(service_pb2.ModelMetadataRequest(name=name))
    request = service_pb2.ModelInferRequest(model_name=name)
    for spec in metadata.inputs:
        values = case_values(case, spec.name, spec.datatype)
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=values.shape)
        flat = values.reshape(-1).tolist()
        if spec.datatype == "BYTES":
            flat = [str(v).encode() for v in flat]
        if spec.datatype in TYPED:
            getattr(tensor.contents, TYPED[spec.datatype]).extend(flat)
    if any(spec.datatype == "FP16" for spec in metadata.inputs):
        with pytest.raises(grpc.RpcError) as refused:
            call.ModelInfer(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 can only be sent as raw_input_contents" in refused.value.details()
        return
    response = call.ModelInfer(request)
    assert not response.raw_output_contents  # typed in, typed out
    for out in response.outputs:
        field = getattr(out.contents, TYPED[out.datatype])
        values = np.array(list(field), dtype=triton_to_np_dtype(out.datatype))
        assert_output(decoded(values.reshape(list(out.shape))), case, out.name)


def infer_error(address: str, request: Any, metadata: tuple = ()) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as refused:
        stub(address).ModelInfer(request, metadata=metadata, timeout=30)
    return refused.value.code(), refused.value.details()


def demo_request(demo_tag: str, values: np.ndarray | None = None, **fields: Any) -> Any:
    values = np.array([[1.0], [2.0]], np.float32) if values is None else values
    request = service_pb2.ModelInferRequest(model_name=demo_tag.split(":")[0], **fields)
    request.inputs.add(name="x", datatype="FP32", shape=values.shape)
    request.raw_input_contents.append(values.astype("<f4").tobytes())
    return request


def test_demo_model_is_exactly_2x_by_version_and_by_routing(
    grpc_address: str, demo_tag: str
) -> None:
    name, version = demo_tag.split(":")
    for chosen in ("", version):
        request = demo_request(demo_tag, np.array([[1.0], [2.5]], np.float32))
        request.model_version = chosen
        response = stub(grpc_address).ModelInfer(request)
        assert (response.model_name, response.model_version) == (name, version)
        y = np.frombuffer(response.raw_output_contents[0], "<f4")
        assert y.tolist() == [2.0, 5.0] and list(response.outputs[0].shape) == [2, 1]


def bad(demo_tag: str, **change: Any) -> Any:
    request = demo_request(demo_tag)
    tensor = request.inputs[0]
    for key, value in change.items():
        if key == "raw":
            request.ClearField("raw_input_contents")
            request.raw_input_contents.extend(value)
        elif key == "outputs":
            request.outputs.add(name=value)
        elif key == "shape":
            tensor.ClearField("shape")
            tensor.shape.extend(value)
        else:
            setattr(tensor, key, value)
    return request


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"datatype": "FP64"}, "INVALID_ARGUMENT", "is FP64; the model takes FP32"),
        ({"name": "z"}, "INVALID_ARGUMENT", "the model takes inputs ['x']"),
        ({"raw": [b"\0" * 4]}, "INVALID_ARGUMENT", "4 bytes of data, but 2 float32"),
        ({"raw": [b"\0" * 8, b"\0" * 8]}, "INVALID_ARGUMENT", "raw_input_contents has 2 entries"),
        ({"raw": [np.array([np.nan, 1], "<f4").tobytes()]}, "INVALID_ARGUMENT", "not a finite"),
        ({"shape": [2, 2], "raw": [b"\0" * 16]}, "INVALID_ARGUMENT", "takes 1 feature(s)"),
        ({"shape": [-1, 1]}, "INVALID_ARGUMENT", "shape"),
        ({"shape": [1] * 17}, "INVALID_ARGUMENT", "MAX_RANK"),
        ({"shape": [TEST_MAX_VALUES + 1, 1]}, "INVALID_ARGUMENT", "too many values"),
        ({"outputs": "nope"}, "INVALID_ARGUMENT", "unknown output(s) ['nope']"),
    ],
)
def test_bad_requests_get_rest_s_message_as_a_grpc_status(
    grpc_address: str, demo_tag: str, change: dict, code: str, message: str
) -> None:
    got, details = infer_error(grpc_address, bad(demo_tag, **change))
    assert (got.name, message in details) == (code, True), details


def test_unknown_models_and_versions_are_not_found(grpc_address: str, demo_tag: str) -> None:
    name = demo_tag.split(":")[0]
    code, details = infer_error(grpc_address, demo_request("nope:x"))
    assert code == grpc.StatusCode.NOT_FOUND and "model 'nope' is not served" in details
    code, details = infer_error(grpc_address, demo_request(demo_tag, model_version="v0"))
    assert code == grpc.StatusCode.NOT_FOUND and "version 'v0' is not served" in details
    for method, message in (
        ("ModelMetadata", service_pb2.ModelMetadataRequest),
        ("ModelReady", service_pb2.ModelReadyRequest),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub(grpc_address), method)(message(name="nope"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub(grpc_address).ModelReady(service_pb2.ModelReadyRequest(name=name)).ready


def test_a_message_past_the_body_limit_is_refused_before_it_is_read(
    grpc_address: str, demo_tag: str
) -> None:
    # V2's limit: the larger of MAX_JSON_BYTES and MAX_BINARY_BYTES (26 bytes a value + 1 MiB).
    limit = 26 * TEST_MAX_VALUES + (1 << 20)
    request = bad(demo_tag, raw=[b"\0" * (limit + 1)])
    code, details = infer_error(grpc_address, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    # ...and the neighbour just inside it reaches the checks (and is refused by them).
    request = bad(demo_tag, raw=[b"\0" * (limit - 64)])
    code, details = infer_error(grpc_address, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bytes of data" in details


def test_tritonclient_raises_with_the_message(grpc_address: str, demo_tag: str) -> None:
    inp = tg.InferInput("x", [1, 1], "FP64")
    inp.set_data_from_numpy(np.array([[1.0]]))
    client = tg.InferenceServerClient(grpc_address)
    with pytest.raises(InferenceServerException, match="the model takes FP32") as raised:
        client.infer(demo_tag.split(":")[0], [inp])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_health_server_metadata_and_metrics_by_protocol(
    grpc_address: str, server_url: str, demo_tag: str
) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(grpc_address))
    for service in ("", "inference.GRPCInferenceService"):
        check = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    metadata = stub(grpc_address).ServerMetadata(service_pb2.ServerMetadataRequest())
    assert metadata.name == httpx.get(f"{server_url}/v2").json()["name"]
    stub(grpc_address).ModelInfer(demo_request(demo_tag))
    infer_error(grpc_address, bad(demo_tag, datatype="FP64"))
    text = httpx.get(f"{server_url}/metrics").text
    assert re.search(r'onnx_predictions_total\{endpoint="ModelInfer",protocol="grpc"', text)
    assert re.search(r'onnx_input_rejections_total\{protocol="grpc",reason="schema"\}', text)
    assert re.search(r'onnx_grpc_calls_total\{code="INVALID_ARGUMENT",method="ModelInfer"\}', text)
    assert 'onnx_grpc_call_duration_seconds_count{method="ModelInfer"}' in text


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ServerLive",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ],
)
@pytest.mark.parametrize("message", [b"\xff\xff\xff", b"\x0a\xff\xff\xff\x0f"])
def test_a_message_that_is_no_protobuf_is_invalid_argument(
    grpc_address: str, method: str, message: bytes
) -> None:
    """Bytes that don't parse as the method's message: INVALID_ARGUMENT that says so, not
    gRPC's own UNKNOWN with a traceback in the log."""
    channel = grpc.insecure_channel(grpc_address)
    with pytest.raises(grpc.RpcError) as refused:
        if method.endswith("Watch"):  # a stream of answers
            next(iter(channel.unary_stream(method)(message, timeout=10)))
        else:
            channel.unary_unary(method)(message, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "not a valid protobuf" in refused.value.details()


def test_health_watch_streams_the_status(grpc_address: str) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(grpc_address))
    answers = health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(iter(answers)).status == health_pb2.HealthCheckResponse.SERVING
    answers.cancel()


def test_api_keys_as_call_metadata(model_home: Path, tmp_path: Path, demo_tag: str) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with running(model_home, tmp_path / "serve.log", API_KEY="k1", GRPC_PORT=str(port)):
        request = demo_request(demo_tag)
        for metadata in ((), (("x-api-key", "wrong"),), (("authorization", "Bearer k2"),)):
            code, details = infer_error(address, request, metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
        for metadata in ((("x-api-key", "k1"),), (("authorization", "Bearer k1"),)):
            assert stub(address).ModelInfer(request, metadata=metadata).outputs
        with pytest.raises(grpc.RpcError) as refused:
            stub(address).ModelMetadata(service_pb2.ModelMetadataRequest(name="linear-2x"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Probes stay open, as REST's are.
        assert stub(address).ServerLive(service_pb2.ServerLiveRequest()).live
        assert stub(address).ServerReady(service_pb2.ServerReadyRequest()).ready
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # SERVING


def test_overload_is_refused_before_work_and_the_rest_answered(
    model_home: Path, tmp_path: Path, demo_tag: str
) -> None:
    """More calls at once than MAX_IN_FLIGHT, each a large tensor: the ones past the limit
    get RESOURCE_EXHAUSTED, every other one its answer, nothing else."""
    port = free_port()
    values = np.arange(1_000_000, dtype=np.float32).reshape(-1, 1)
    request = demo_request(demo_tag, values)

    async def flood() -> list[str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def one() -> str:
                try:
                    await call(request, timeout=60)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name

            return await asyncio.gather(*(one() for _ in range(96)))

    env = {"GRPC_PORT": str(port), "MIN_IN_FLIGHT": "4", "MAX_IN_FLIGHT": "4", "WORKERS": "1"}
    codes: list[str] = []
    with running(model_home, tmp_path / "serve.log", **env):
        # How many calls the server holds at once depends on how fast its loop takes them
        # up: one flood in a CI run got no more than 4 at a time. Up to three floods, until
        # one is refused; every answer of every flood is checked.
        for _ in range(3):
            codes += asyncio.run(flood())
            if "RESOURCE_EXHAUSTED" in codes:
                break
    counts = {code: codes.count(code) for code in set(codes)}
    print(f"\n{len(codes)} calls of 1M values at MAX_IN_FLIGHT=4: {counts}")
    assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"} and counts.get("OK", 0) > 0, counts
    assert counts.get("RESOURCE_EXHAUSTED", 0) > 0, counts


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113, 4.1)."""
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def stalled_call(port: int) -> socket.socket:
    """A connection whose one ModelInfer call sends 10 of its message's 1,000 bytes and then
    nothing: hand-built HTTP/2 frames (HPACK literals), as no gRPC client stops mid-message."""

    def literal(name: bytes, value: bytes) -> bytes:
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    headers = b"".join(
        literal(name, value)
        for name, value in (
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
            (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        )
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))  # SETTINGS
    sock.sendall(frame(1, 0x4, 1, headers))  # HEADERS, END_HEADERS
    sock.sendall(frame(0, 0, 1, b"\x00" + (1000).to_bytes(4, "big") + bytes(10)))  # DATA
    return sock


def stream_ended(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends stream 1 (trailers with END_STREAM, or RST_STREAM) in time."""
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFF_FFFF
            if stream == 1 and (kind == 3 or (kind == 1 and flags & 0x1)):
                return True
            if kind == 4 and not flags & 0x1:
                sock.sendall(frame(4, 0x1, 0, b""))  # SETTINGS ACK
            buffer = buffer[9 + length :]
        try:
            data = sock.recv(65_536)
        except TimeoutError:
            return False
        if not data:
            return False
        buffer += data


def test_stalled_calls_hold_no_slot_and_are_cut(
    model_home: Path, tmp_path: Path, demo_tag: str
) -> None:
    """Three times MAX_IN_FLIGHT calls whose message stalls (none sent through gRPC itself;
    10 of 1,000 bytes over raw HTTP/2) give their slots back: an honest call is answered
    while they wait, and each is cut with DEADLINE_EXCEEDED when HTTP_BODY_TIMEOUT passes,
    counted as a slow body. A connection that sends nothing is closed."""
    port = free_port()
    env = {"GRPC_PORT": str(port), "MAX_IN_FLIGHT": "4", "MIN_IN_FLIGHT": "4", "WORKERS": "1"}
    address, never = f"127.0.0.1:{port}", threading.Event()

    def no_message() -> Iterator[Any]:
        never.wait(60)  # a request stream that sends nothing
        yield from ()

    timeouts = {"HTTP_BODY_TIMEOUT": "3", "HTTP_HEADER_TIMEOUT": "2"}
    with running(model_home, tmp_path / "serve.log", **timeouts, **env) as server:
        # A connection that never sends HTTP/2's preface is closed after HTTP_HEADER_TIMEOUT.
        silent_connection = socket.create_connection(("127.0.0.1", port))
        silent = grpc.insecure_channel(address).stream_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        futures, sockets = [], []
        try:
            # Three at a time (under MAX_IN_FLIGHT), each group past the others' slot time.
            for _ in range(2):
                futures += [silent.future(no_message(), timeout=30) for _ in range(3)]
                time.sleep(0.5)
                sockets += [stalled_call(port) for _ in range(3)]
                time.sleep(0.5)
            answer = stub(address).ModelInfer(demo_request(demo_tag), timeout=5)
            assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [2.0, 4.0]
            for future in futures:
                exc = future.exception(timeout=20)
                assert exc is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
                assert "did not arrive within HTTP_BODY_TIMEOUT=3 s" in exc.details()
            assert all(stream_ended(sock, timeout=10) for sock in sockets)
            silent_connection.settimeout(10)
            while silent_connection.recv(65_536):  # its SETTINGS, then the end
                pass
        finally:
            never.set()
            silent_connection.close()
            for sock in sockets:
                sock.close()
        text = httpx.get(f"{server.url}/metrics").text
    cut = re.search(
        r'onnx_input_rejections_total\{protocol="grpc",reason="slow_body"\} (\S+)', text
    )
    assert cut and float(cut[1]) == 12, text
    assert 'onnx_grpc_calls_total{code="RESOURCE_EXHAUSTED"' not in text


def test_sigterm_finishes_calls_in_flight_and_turns_health_off(
    model_home: Path, tmp_path: Path, demo_tag: str
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = BentoServer(
        model_home, tmp_path / "serve.log", GRPC_PORT=str(port), DRAIN_SECONDS="2", WORKERS="1"
    )
    values = np.arange(1_000_000, dtype=np.float32).reshape(-1, 1)
    try:
        server.wait_ready(timeout=90)
        channel = grpc.insecure_channel(address)
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        health = health_pb2_grpc.HealthStub(channel)
        futures = [call.future(demo_request(demo_tag, values), timeout=60) for _ in range(8)]
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status = health.Check(health_pb2.HealthCheckRequest()).status
        answers = [f.result().model_name for f in futures]
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert answers == [demo_tag.split(":")[0]] * 8


def test_the_canary_key_picks_the_same_version_as_over_rest(
    two_versions: tuple[Path, str], tmp_path: Path
) -> None:
    """Without model_version, the routing picks: the canary by the `x-request-key` metadata,
    as REST picks it by the X-Request-Key header."""
    from version_models import TRIPLE, serving

    home, demo = two_versions
    port = free_port()
    routing = f"default: {demo}\ncanary: {{version: v3, percent: 50}}\n"
    with serving(home, tmp_path, [demo, TRIPLE], routing, GRPC_PORT=str(port)) as (server, _):
        picked = {}
        for key in (f"user-{i}" for i in range(40)):
            request = demo_request(demo)
            response = stub(f"127.0.0.1:{port}").ModelInfer(
                request, metadata=(("x-request-key", key),)
            )
            rest = httpx.post(
                f"{server.url}/predict", json={"x": [1.0, 2.0]}, headers={"X-Request-Key": key}
            )
            picked[key] = (response.model_version, rest.json()["model"].split(":")[1])
    assert all(grpc_v == rest_v for grpc_v, rest_v in picked.values()), picked
    assert {v for v, _ in picked.values()} == {demo.split(":")[1], "v3"}  # both were picked


def test_reflection_when_asked_for(model_home: Path, tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    port = free_port()
    env = {"GRPC_PORT": str(port), "GRPC_REFLECTION": "true"}
    with (
        running(model_home, tmp_path / "serve.log", **env),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([ask])
        )
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
