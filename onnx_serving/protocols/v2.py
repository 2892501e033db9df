"""The Open Inference Protocol (KServe V2) over REST, beside the native API, on the same runner.

    GET  /v2                                  server metadata
    GET  /v2/health/live, /v2/health/ready    {"live": true}, {"ready": true}
    GET  /v2/models/{name}[/versions/{v}]     model metadata: inputs, outputs, datatypes
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

Infer takes V2's JSON tensors and its binary tensor extension (v2_codec.py), as tritonclient
sends them. Errors are V2's `{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from onnx_serving.edge.route_table import client_key
from onnx_serving.protocols import v2_codec as codec
from onnx_serving.protocols.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    feeds_of,
    parse,
    respond,
)

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its $defs written in place, for an OpenAPI body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


def _served() -> Any:
    import bentoml

    return bentoml.get_current_service().versions


def _model(name: str, version: str | None, request: Request | None = None) -> tuple[Any, Any]:
    """The loaded model V2 calls `name` (and `version`) and how it was chosen, or V2Error 404.
    Without a version, the routing picks (default, or canary by X-Request-Key)."""
    if request is None:
        return _served().named(name, version)
    return _served().named(name, version, request.headers, client_key(request))


# --- routes -----------------------------------------------------------------------------------


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return codec.server_metadata(["binary_tensor_data"])


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness: the model is loaded and warmed up")
async def ready() -> JSONResponse:
    import bentoml

    # As /readyz and gRPC's ServerReady (the service's ready()): loaded, warmed up, and not
    # draining after SIGTERM.
    service = bentoml.get_current_service()
    ok = bool(getattr(service, "runner", None) and service.ready())
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


PATH_PARAMETERS = {
    "name": "The model's name, e.g. linear-2x",
    "version": "The model's version, e.g. sha256-cb0c4b0ee3ec16c9",
}


def params(*names: str, **extra: Any) -> dict[str, Any]:
    """OpenAPI path parameters: the handlers read them from request.path_params."""
    listed = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
         "description": PATH_PARAMETERS[n]}
        for n in names
    ]  # fmt: skip
    return {"parameters": listed, **extra}


@router.get("/models/{name}", summary="Model metadata", openapi_extra=params("name"))
@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata, one version",
    openapi_extra=params("name", "version"),
)
async def model_metadata(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    version = request.path_params.get("version")
    model, _ = _model(name, version)
    sig = model.signature
    body = codec.model_metadata(model, list(_served().runner.models), version)
    body["parameters"] = {"classes": list(sig.classes), "batching": sig.batching_note()}
    return JSONResponse(body)


@router.get("/models/{name}/ready", summary="Model readiness", openapi_extra=params("name"))
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model readiness, one version",
    openapi_extra=params("name", "version"),
)
async def model_ready(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    from onnx_serving._patches.uvicorn_drain import DRAINER

    _model(name, request.path_params.get("version"))
    ready = not DRAINER.draining  # as /readyz: not while the worker drains after SIGTERM
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)


INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary tensor extension: a JSON header of {HEADER_LENGTH} "
                "bytes, then each binary input's bytes in order.",
            },
        },
    },
    "responses": {
        "200": {
            "description": "The outputs (binary ones after a JSON header, as in the request)",
            "content": {"application/json": {"schema": _inline(InferResponse)}},
        },
        "400": {"description": 'A bad request: `{"error": "..."}`'},
        "404": {"description": 'No such model or version: `{"error": "..."}`'},
    },
}


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=params("name", **INFER_DOC))
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference, one version",
    openapi_extra=params("name", "version", **INFER_DOC),
)
async def infer(request: Request) -> Response:
    from onnx_serving.config import settings

    limits = settings()
    model, route = _model(request.path_params["name"], request.path_params.get("version"), request)
    parsed, binary = parse(await request.body(), request.headers.get(HEADER_LENGTH))
    feeds = feeds_of(parsed, binary, model, limits.max_values, limits.max_rank)
    outputs = model.run(feeds)
    _served().answered(route, "/v2/infer", feeds, outputs)
    response = respond(parsed, model, outputs)
    response.headers["X-Model"] = model.tag
    return response
