"""The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`, as
Triton and KServe serve it and `tritonclient.grpc` calls it.

    ServerLive, ServerReady, ServerMetadata      the server
    ModelReady, ModelMetadata                    a model by name (and version)
    ModelInfer                                   tensors in `raw_input_contents` (flat,
                                                 little-endian, one entry per input) or in
                                                 each input's typed `contents`

The same versions, routing (`model_version`; the canary key as `x-request-key` metadata),
shadow, checks, metadata and error messages as V2 over REST (the codec's, v2_codec.py): a
refusal is the service's one error type, sent as the gRPC status its HTTP status maps to
(STATUS below).
Outputs come back as the inputs came: raw for raw, typed for typed. The server around it
(ports, limits, keys, health, drain) is grpc_server.py.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from onnx_serving import errors
from onnx_serving.errors import ServingError
from onnx_serving.model.tensors import DATATYPES, check_shape, from_json, to_bytes
from onnx_serving.protocols.grpc_stubs import open_inference_pb2 as pb
from onnx_serving.protocols.grpc_stubs import open_inference_pb2_grpc as pb_grpc
from onnx_serving.protocols.native import check_feeds
from onnx_serving.protocols.v2_codec import (
    check_inputs,
    model_metadata,
    raw_values,
    server_metadata,
)

# An HTTP status of the one error contract -> the gRPC status a V2 client expects for it.
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}

# Each datatype's typed field of InferTensorContents (FP16 has none: raw contents only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ENDPOINT = "ModelInfer"  # the endpoint label of its predictions (protocol="grpc")


def _version(given: str) -> str | None:
    return given or None  # proto3: an empty string is "not given"


def _typed(t: Any, dtype: np.dtype, count: int, where: str, allow_nan: bool) -> np.ndarray:
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise ServingError(f"{where}: {t.datatype} can only be sent as raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise ServingError(
            f"{where}: shape {list(t.shape)} holds {count} values, contents has {len(values)}"
        )
    if dtype.kind == "O":
        return np.array([v.decode("utf-8", "replace") for v in values], dtype=object)
    if dtype.kind == "b":
        return np.array(values, dtype=bool)
    # Through the JSON path's checks: range for narrow integers, NaN and infinity for floats.
    return from_json(list(values), dtype, where, allow_nan)


def feeds_of(request: Any, model: Any, max_values: int, max_rank: int) -> tuple[Any, bool]:
    """The request's checked Feeds, and whether its tensors came raw."""
    sig = model.signature
    check_inputs(sig, [(t.name, t.datatype) for t in request.inputs])
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ServingError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "one per input, in the order of `inputs`"
        )
    arrays = {}
    for i, t in enumerate(request.inputs):
        where = f"input {t.name!r}"
        dtype = DATATYPES[t.datatype]
        # Before anything is allocated for it (a shape of 65 dimensions or [0, 2**63] too).
        count = check_shape(list(t.shape), where, max_values, max_rank)
        if raw:
            if t.HasField("contents"):
                raise ServingError(f"{where} has contents, but raw_input_contents is used")
            values = raw_values(raw[i], dtype, count, where, sig.allow_nan)
        else:
            values = _typed(t, dtype, count, where, sig.allow_nan)
        arrays[t.name] = values.reshape(list(t.shape))
    return check_feeds(sig, arrays, max_values), bool(raw)


def response_of(request: Any, model: Any, outputs: dict[str, np.ndarray], raw: bool) -> Any:
    names = [o.name for o in request.outputs] or list(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise ServingError(f"unknown output(s) {unknown}; the model gives {list(outputs)}")
    specs = {s.name: s for s in model.signature.outputs}
    # All raw, or all typed: an FP16 output has no typed field, so it makes the answer raw.
    raw = raw or any(specs[n].datatype not in CONTENTS for n in names)
    name, version = model.tag.split(":")
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id)
    for out_name in names:
        values = outputs[out_name]
        datatype = specs[out_name].datatype
        tensor = response.outputs.add(name=out_name, datatype=datatype, shape=values.shape)
        field = CONTENTS.get(datatype)
        if raw or field is None:
            response.raw_output_contents.append(to_bytes(values))
        elif values.dtype.kind == "O":
            tensor.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in values.reshape(-1)
            )
        else:
            getattr(tensor.contents, field).extend(values.reshape(-1).tolist())
    return response


async def refuse(context: Any, status: int, reason: str, message: str, method: str) -> None:
    """End the call with the gRPC status of HTTP `status` (STATUS), counted and logged as
    every refusal is (a 4xx; a 503 is the caller's to count)."""
    if status < 500:
        rid = errors.request_id(dict(context.invocation_metadata() or ()))
        errors.refused(status, reason, message, f"gRPC {method}", rid, "grpc")
    await context.abort(STATUS.get(status, grpc.StatusCode.INTERNAL), message)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs, on the worker's served versions."""

    def __init__(self, versions: Any, settings: Any, is_ready: Any) -> None:
        self.versions, self.settings, self.is_ready = versions, settings, is_ready

    async def _refuse(self, context: Any, exc: ServingError, method: str) -> None:
        await refuse(context, exc.status, exc.reason, str(exc), method)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**server_metadata([]))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.versions.named(request.name, _version(request.version))
        except ServingError as exc:
            return await self._refuse(context, exc, "ModelReady")
        return pb.ModelReadyResponse(ready=self.is_ready())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        version = _version(request.version)
        try:
            model, _ = self.versions.named(request.name, version)
        except ServingError as exc:
            return await self._refuse(context, exc, "ModelMetadata")
        # The REST answer's fields (no `parameters`: the message has none).
        return pb.ModelMetadataResponse(
            **model_metadata(model, list(self.versions.runner.models), version)
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        settings = self.settings
        try:
            meta = dict(context.invocation_metadata() or ())
            model, route = self.versions.named(
                request.model_name, _version(request.model_version), meta, peer_host(context)
            )
            feeds, raw = feeds_of(request, model, settings.max_values, settings.max_rank)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise ServingError(
                    "the call's deadline passed before the model ran", 408, "timeout"
                )
            outputs = model.run(feeds)
            response = response_of(request, model, outputs, raw)
        except ServingError as exc:
            return await self._refuse(context, exc, "ModelInfer")
        self.versions.answered(route, ENDPOINT, feeds, outputs, "grpc")
        return response


def peer_host(context: Any) -> str:
    """The caller's address without its port ("ipv4:127.0.0.1:5000" -> "127.0.0.1"): the
    canary's key when no x-request-key is sent, as the client address is over REST."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]").removeprefix("%5B").removesuffix("%5D")
    return rest.rpartition(":")[0] if kind == "ipv4" else ""
