"""The Open Inference Protocol's tensors on the wire: the request and response models, JSON
tensors and the binary tensor extension (a JSON header of `Inference-Header-Content-Length`
bytes, then the raw tensors in order), decoded into checked Feeds and encoded back.
The routes that use it are in v2.py.
"""

from __future__ import annotations

import functools
from typing import Any, Union

import numpy as np
import pydantic_core
from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from onnx_serving.errors import ServingError
from onnx_serving.model.tensors import (
    DATATYPES,
    check_shape,
    check_values,
    from_bytes,
    from_json,
    to_bytes,
    to_json,
)
from onnx_serving.protocols.native import SCALARS, array_of, check_feeds

HEADER_LENGTH = "Inference-Header-Content-Length"


class Tensor(BaseModel):
    name: str
    shape: list[int] = Field(description="The tensor's shape; every dimension >= 0.")
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES")
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = Field(
        default=None, description="Row-major values, flat or nested; absent for binary data."
    )


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[Tensor]


# V2's errors are the service's one error type; V2 and the native API share its body.
V2Error = ServingError


# --- decoding ---------------------------------------------------------------------------------


@functools.cache
def _data_type(kind: str, depth: int) -> TypeAdapter:
    """Flat, or nested as deep as the tensor's rank, of the datatype's strict JSON scalar."""
    scalar = SCALARS.get(kind, str)
    nested, options = scalar, []
    for _ in range(max(depth, 1)):
        nested = array_of(nested)
        options.append(nested)
    return TypeAdapter(Union[tuple(options)])  # noqa: UP007  (Annotated members: no `|`)


def _decode(
    t: Tensor, binary: memoryview | None, allow_nan: bool, max_values: int, max_rank: int
) -> np.ndarray:
    dtype = DATATYPES.get(t.datatype)
    if dtype is None:
        raise V2Error(
            f"input {t.name!r}: unknown datatype {t.datatype!r}; known: {list(DATATYPES)}"
        )
    where = f"input {t.name!r}"
    # Before anything is allocated for it (a shape of 65 dimensions or [0, 2**63] included).
    count = check_shape(t.shape, where, max_values, max_rank)
    if binary is not None:
        values = raw_values(binary, dtype, count, where, allow_nan)
    else:
        if t.data is None:
            raise V2Error(f"{where} has neither data nor parameters.binary_data_size")
        try:
            data = _data_type(dtype.kind, len(t.shape)).validate_python(t.data, strict=True)
        except ValidationError as exc:
            raise V2Error(
                f"{where}: data must hold {t.datatype} values: {exc.errors()[0]['msg']}"
            ) from None
        values = from_json(data, dtype, where, allow_nan).reshape(-1)
        if values.size != count:
            raise V2Error(f"{where}: shape {t.shape} holds {count} values, data has {values.size}")
    return values.reshape(t.shape)


def raw_values(
    data: bytes | memoryview, dtype: np.dtype, count: int, where: str, allow_nan: bool
) -> np.ndarray:
    """A tensor's raw bytes (the binary extension's, gRPC's raw contents), flat and checked."""
    return check_values(from_bytes(data, dtype, count, where), dtype, where, allow_nan)


def check_inputs(sig: Any, given: list[tuple[str, str]]) -> None:
    """The request's (name, datatype) pairs against the model's inputs: every input once,
    each with the model's datatype."""
    names = [name for name, _ in given]
    wanted = [s.name for s in sig.inputs]
    if sorted(names) != sorted(wanted):
        raise V2Error(f"the model takes inputs {wanted}, the request has {names}")
    for name, datatype in given:
        spec = sig.input(name)
        if datatype != spec.datatype:
            raise V2Error(f"input {name!r} is {datatype}; the model takes {spec.datatype}")


def server_metadata(extensions: list[str]) -> dict[str, Any]:
    from bentoml import server_context

    # The bento's version inside an image; a plain `bentoml serve` has none.
    version = server_context.bento_version
    version = "dev" if not version or version == "not available" else version
    return {"name": "onnx-serving", "version": version, "extensions": extensions}


def model_metadata(model: Any, served: list[str], version: str | None) -> dict[str, Any]:
    """A model's V2 metadata: its name, versions (the one asked for, or every one of that
    name served), platform and tensors, with -1 for a dynamic dimension."""
    sig = model.signature
    tag_name, tag_version = model.tag.split(":")
    every = [t.split(":")[1] for t in served if t.split(":")[0] == tag_name]

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": s.v2_shape()} for s in specs]

    return {
        "name": tag_name,
        "versions": [tag_version] if version else every,
        "platform": "onnxruntime_onnx",
        "inputs": tensors(sig.inputs),
        "outputs": tensors(sig.outputs),
    }


def parse(body: bytes, header_length: str | None) -> tuple[InferRequest, memoryview]:
    """The JSON header and the binary part after it (empty for a plain JSON request)."""
    view = memoryview(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise V2Error(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise V2Error(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        head, view = view[:n], view[n:]
    else:
        head, view = view, view[len(body) :]
    try:
        return InferRequest.model_validate_json(bytes(head)), view
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise V2Error(
            f"invalid inference request: {where}: {first['msg']}"
            if where
            else f"invalid inference request: {first['msg']}"
        ) from None


def feeds_of(
    request: InferRequest, binary: memoryview, model: Any, max_values: int, max_rank: int = 16
) -> Any:
    sig = model.signature
    check_inputs(sig, [(t.name, t.datatype) for t in request.inputs])
    arrays, offset = {}, 0
    for t in request.inputs:
        size = t.parameters.get("binary_data_size")
        part = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise V2Error(f"input {t.name!r}: binary_data_size {size} runs past the body")
            part, offset = binary[offset : offset + size], offset + size
        arrays[t.name] = _decode(t, part, sig.allow_nan, max_values, max_rank)
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} byte(s) of binary data belong to no input")
    return check_feeds(sig, arrays, max_values)


# --- encoding ---------------------------------------------------------------------------------


def respond(request: InferRequest, model: Any, outputs: dict[str, np.ndarray]) -> Response:
    names = [o.name for o in request.outputs] if request.outputs else list(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise V2Error(f"unknown output(s) {unknown}; the model gives {list(outputs)}")
    wants = {o.name: o.parameters for o in request.outputs or []}
    binary_default = bool(request.parameters.get("binary_data_output", False))
    specs = {s.name: s for s in model.signature.outputs}
    described, chunks = [], []
    for name in names:
        values = outputs[name]
        out: dict[str, Any] = {
            "name": name,
            "datatype": specs[name].datatype,
            "shape": list(values.shape),
        }
        if wants.get(name, {}).get("binary_data", binary_default):
            raw = to_bytes(values)
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = to_json(values.reshape(-1))  # V2 sends data flat, row-major
        described.append(out)
    name, version = model.tag.split(":")
    head: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": described}
    if request.id is not None:
        head["id"] = request.id
    header = pydantic_core.to_json(head)  # NaN and infinity as null: JSON has no literal for them
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
