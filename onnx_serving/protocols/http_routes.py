"""Routes that BentoML's @bentoml.api can't express: GETs, raw bodies, image uploads, and the
Open Inference Protocol. A FastAPI app mounted on the service with @bentoml.asgi_app:
BentoML merges a mounted FastAPI app's OpenAPI paths into its own /docs.json, so every
route is in one API document. Errors are `{"error": "..."}` with a 4xx, as everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from onnx_serving import errors
from onnx_serving.config import settings
from onnx_serving.edge.error_contract import error_response
from onnx_serving.edge.route_table import client_key
from onnx_serving.errors import ServingError
from onnx_serving.model.tensors import InvalidInput, check_shape, check_values, from_bytes, to_bytes
from onnx_serving.protocols import images, v2
from onnx_serving.protocols.native import check_feeds

# BentoML serves the documentation (/ and /docs.json); this app only lends it its paths.
app = FastAPI(title="onnx-serving routes", openapi_url=None, docs_url=None, redoc_url=None)
app.include_router(v2.router)


@app.exception_handler(RequestValidationError)
async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    # `ctx` may hold the exception itself, which JSON can't carry.
    detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()[:10]]
    where = ".".join(str(p) for p in detail[0]["loc"])
    return JSONResponse({"error": f"{where}: {detail[0]['msg']}", "detail": detail}, 400)


@app.exception_handler(StarletteHTTPException)
async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own errors (an unparsable multipart body, say) in the one error format.
    return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)


@app.exception_handler(ServingError)
async def refused(_: Request, exc: ServingError) -> JSONResponse:
    return error_response(exc)


def versions() -> Any:
    """The served versions of this worker (onnx_serving/versions/served.py)."""
    import bentoml

    return bentoml.get_current_service().versions


def chosen(request: Request) -> tuple[Any, Any]:
    """The model that answers `request`, and how it was chosen (404 for an unknown version)."""
    return versions().choose(request.headers, client_key(request))


@app.get("/docs", include_in_schema=False)
async def docs() -> RedirectResponse:
    """Where FastAPI users look for the API's page: BentoML serves it at /."""
    return RedirectResponse("/", status_code=307)


@app.get(
    "/metadata",
    summary="Which model answers: the default version's tag, file, SHA-256, signature and "
    "metrics; every served version; the routing",
)
async def metadata() -> JSONResponse:
    served = versions()
    router = served.router
    default = served.runner.models[router.default]
    routing = {
        "default": router.default,
        "canary": {"version": router.canary[0], "percent": router.canary[1]}
        if router.canary
        else None,
        "shadow": router.shadow,
        "file": str(router.file) if router.file else None,
    }
    return JSONResponse(
        {
            **default.info,
            "routing": routing,
            "versions": {t: m.info for t, m in served.runner.models.items()},
        }
    )


BINARY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "The input's values, little-endian, row after row.",
            }
        },
    },
    "responses": {
        "200": {
            "description": "The output's values, little-endian; "
            "headers X-Model, X-Shape, X-Datatype",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "400": {"description": 'A bad body: `{"error": "..."}`'},
    },
}


@app.post(
    "/predict_binary",
    summary="Raw little-endian tensors in and out, for large requests to one-input models",
    openapi_extra=BINARY_DOC,
)
async def predict_binary(request: Request) -> Response:
    """The body is the input's values (its own type, little-endian); `X-Shape: rows,...`
    gives the shape, else rows of the input's static width. No JSON to parse or write."""
    model, route = chosen(request)
    sig = model.signature
    if not (sig.single_input and sig.single_output):
        raise InvalidInput("/predict_binary serves models of one input and one output; use V2")
    (spec,) = sig.inputs
    body = await request.body()
    if not body:
        raise InvalidInput(f"the body is empty: send little-endian {spec.datatype} values")
    limits = settings()
    shape = _shape(request.headers.get("X-Shape"), len(body), spec)
    count = check_shape(shape, "X-Shape", limits.max_values, limits.max_rank)
    values = from_bytes(body, spec.dtype, count, "the body")
    values = check_values(values.reshape(shape), spec.dtype, "x", sig.allow_nan)
    feeds = check_feeds(sig, {spec.name: values}, limits.max_values)
    outputs = model.run(feeds)
    versions().answered(route, "/predict_binary", feeds, outputs)
    (y,) = outputs.values()
    return Response(
        to_bytes(y),
        media_type="application/octet-stream",
        headers={
            "X-Model": model.tag,
            "X-Shape": ",".join(map(str, y.shape)),
            "X-Datatype": sig.outputs[0].datatype,
        },
    )


def _shape(header: str | None, nbytes: int, spec: Any) -> list[int]:
    if header:
        try:
            shape = [int(d) for d in header.split(",")]
        except ValueError:
            raise InvalidInput(
                f"X-Shape must be integers separated by commas, got {errors.safe(header, 80)!r}"
            ) from None
        return shape
    if spec.dtype.kind == "O":
        raise InvalidInput("string tensors need an X-Shape header")
    width = spec.width or 1
    if nbytes % (spec.dtype.itemsize * width):
        raise InvalidInput(
            f"the body has {nbytes} bytes: not whole rows of {width} {spec.datatype} value(s)"
        )
    return [nbytes // (spec.dtype.itemsize * width), width]


@app.post(
    "/predict_image",
    summary="Classify an uploaded PNG or JPEG (models that take one image tensor)",
    responses={400: {"description": "Not an image model, or not a readable image"}},
)
async def predict_image(
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="A PNG or JPEG picture")],
    top_k: Annotated[int, Query(ge=1, le=1000, description="How many classes to return")] = 5,
) -> dict[str, Any]:
    model, route = chosen(request)
    sig = model.signature
    if sig.image is None:
        raise InvalidInput(
            "this model takes no image: /predict_image needs one float input of rank 4 with "
            "1 or 3 channels"
        )
    # Decoding takes up to a second of CPU for the largest image allowed: off the event loop.
    data = await file.read()
    tensor = await run_in_threadpool(images.to_tensor, data, sig.image, settings().max_image_pixels)
    feeds = check_feeds(sig, {sig.inputs[0].name: tensor}, settings().max_values)
    outputs = model.run(feeds)
    versions().answered(route, "/predict_image", feeds, outputs)
    response.headers["X-Model"] = model.tag
    scores = next(iter(outputs.values()))
    return {"top": images.top_classes(scores[0], sig.image, sig.classes, top_k), "model": model.tag}


# The raw-body routes answer through plain Starlette routes placed first: FastAPI's request
# handling (parameter solving, response checks) measured about 60 µs a request for nothing
# these endpoints use, against ~10 µs for a plain route. Their APIRoutes above still give
# /docs.json its paths; exceptions still reach this app's handlers.
for path, endpoint in (
    ("/predict_binary", predict_binary),
    ("/v2/models/{name}/infer", v2.infer),
    ("/v2/models/{name}/versions/{version}/infer", v2.infer),
):
    app.router.routes.insert(0, Route(path, endpoint, methods=["POST"]))
