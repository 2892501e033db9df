"""The BentoML service: any ONNX model over HTTP.

    POST /predict          real time, no queue: {"x": ...} or {"inputs": {...}}
    POST /predict_batched  the same contract, through BentoML's adaptive batching
    POST /predict_file     a large CSV or .npy file, streamed through in chunks
    POST /predict_binary   raw little-endian tensors in and out, for large requests
    POST /predict_image    a PNG or JPEG, for image models: the top classes
    GET  /metadata         which versions are served and routed, their files, hashes, metrics
    /v2/...                the Open Inference Protocol (KServe V2), JSON and binary

Data flows one way: HTTP body -> validation (onnx_serving.validation, .tensors, .v2)
-> the one ONNX Runtime session (onnx_serving.runner) -> response.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from pathlib import Path
from typing import Any

import bentoml

from onnx_serving import (
    batching,
    bentoml_fixes,
    dispatcher,
    http_protocol,
    model_store,
)
from onnx_serving.config import settings
from onnx_serving.drain import DRAINER, DrainMiddleware
from onnx_serving.error_contract import ErrorContract, error_response, install_log_filters
from onnx_serving.errors import ServingError
from onnx_serving.feeds import BatchPredictions, BatchRefusal, Feeds
from onnx_serving.guards import (
    ApiKeyGuard,
    BatchingRefusal,
    BodyBudget,
    ContentTypeGuard,
    JsonNotFound,
)
from onnx_serving.openapi import CompleteDocs
from onnx_serving.routes import app as plain_routes
from onnx_serving.routing import Router, RoutingError
from onnx_serving.signature import InvalidModel
from onnx_serving.validation import request_model, response_model

with bentoml.importing():
    from anyio import to_thread
    from bentoml._internal.context import request_temp_dir, server_context

    from onnx_serving.batch_files import FileRequest, predict_file
    from onnx_serving.runner import ModelRunner
    from onnx_serving.versions import Versions, client_key

# uvicorn's HTTP protocol with load shedding before the app (MAX_QUEUE_MS, MAX_IN_FLIGHT) and
# the header and body read timeouts it lacks; BentoML's request timeout without its timer
# leak (onnx_serving/bentoml_fixes.py).
http_protocol.install()
bentoml_fixes.apply()
dispatcher.apply()
install_log_filters()
# Resolve and check the served versions here, in the `bentoml serve` process itself: a
# missing model, a hash mismatch or a routing that names a version not served then stops
# the command at once with one line saying what to do, instead of a worker failing at start
# and being restarted forever.
try:
    SETTINGS = settings()
    REFS = [t.strip() for t in SETTINGS.model_tags.split(",") if t.strip()] or [SETTINGS.model_ref]
    STORED, SIGNATURE = model_store.get_verified_set(REFS)
    ROUTING = Router.from_settings([str(s.tag) for s in STORED], SETTINGS.routing_file)
    if server_context.worker_index is None:
        # Not a worker: `bentoml serve` itself (or `bentoml build`). A model that can't run
        # would fail every worker at start: try it here, once.
        for stored in STORED:
            ModelRunner(SETTINGS).load(stored, SIGNATURE)
except (
    model_store.ModelNotFound,
    model_store.ModelIntegrityError,
    InvalidModel,
    RoutingError,
    RuntimeError,
) as exc:
    raise SystemExit(f"error: {exc}") from None
# Adaptive batching as measured for the first version at import, unless the environment says.
BATCHING = batching.resolve(
    STORED[0].info.metadata, SETTINGS.batch_max_size, SETTINGS.batch_max_latency_ms
)
# The request and response bodies follow the served model's inputs and outputs.
PredictRequest = request_model(SIGNATURE, SETTINGS.max_values)
BatchedRequest = request_model(
    SIGNATURE, SETTINGS.max_values, BATCHING["max_batch_size"], "BATCH_MAX_SIZE"
)
PredictResponse = response_model(SIGNATURE)


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="onnx_model",
    workers=SETTINGS.workers,
    traffic={"timeout": 300},
    # Per-request access log lines and spans cost more than the model (README, Performance).
    logging={"access": {"enabled": SETTINGS.access_log}},
    # Patterns matched anywhere in the URL: every /predict* route and V2's .../infer.
    tracing={"excluded_urls": [] if SETTINGS.trace_predictions else ["/predict", "/infer"]},
    labels={"project": "onnx-bento-service"},
)
class OnnxModelService:
    # A class attribute, so that `bentoml build` packs the (first) model into the bento.
    model_ref = bentoml.models.BentoModel(str(STORED[0].tag))

    def __init__(self) -> None:
        # STORED was verified at import; loading and warm-up finish before /readyz turns 200.
        self.runner = ModelRunner(SETTINGS)
        for stored in STORED:
            self.runner.load(stored, SIGNATURE).info["batching"] = BATCHING
        self.versions = Versions(self.runner, ROUTING, PredictResponse)
        # Everything alive now (BentoML, pydantic, ONNX Runtime...) lives as long as the
        # worker: keep it out of the garbage collector's full passes, which otherwise stop the
        # worker for ~150 ms every few seconds under load, for nothing to collect.
        gc.collect()
        gc.freeze()

    @bentoml.on_startup
    async def start_worker_tasks(self) -> None:
        # In the worker's event loop inside uvicorn's serve(): SIGTERM starts a drain, and a
        # routing file is reloaded when it changes.
        DRAINER.install()
        if ROUTING.file is not None:
            self.watcher = asyncio.get_running_loop().create_task(ROUTING.watch())

    async def __is_ready__(self) -> bool:
        # /readyz answers 503 while the worker drains after SIGTERM.
        return not DRAINER.draining

    @bentoml.api(input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, feeds: Feeds, ctx: bentoml.Context) -> PredictResponse:
        """Real-time prediction: rows in, predictions out, in the same order. The version
        that answers: `X-Model-Version`, else the routing (default, canary by
        `X-Request-Key`); `X-Model` and the body's `model` name it."""
        request = ctx.request
        try:
            model, route = self.versions.choose(request.headers, client_key(request))
            # async and inline: a microsecond-scale ONNX call is cheaper than a thread hop.
            outputs = model.run(feeds)
        except ServingError as exc:
            return refused(exc, ctx)
        self.versions.answered(route, "/predict", feeds, outputs)
        return self.versions.respond[route.tag](outputs)

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=BATCHING["max_batch_size"],
        max_latency_ms=BATCHING["max_latency_ms"],
        input_spec=BatchedRequest,
        output_spec=PredictResponse,
    )
    async def predict_batched(self, feeds: Feeds) -> BatchPredictions | BatchRefusal:
        """The same contract as /predict, served through BentoML's adaptive batching, by the
        default version (a batch is one call of one version).

        Requests that arrive together are stacked along rows, run once, and handed back
        a slice each, so every caller gets exactly its own rows.
        """
        model, route = self.versions.default()
        try:
            if BATCHING["in_thread"]:  # a model call of milliseconds: see batching.resolve
                outputs = await to_thread.run_sync(model.run, feeds)
            else:
                outputs = model.run(feeds)
        except ServingError as exc:
            # The model could not run the batch (what the checks before batching can't
            # see): each request in it gets the model's 4xx; /predict runs a request alone.
            return BatchRefusal(functools.partial(error_response, exc))
        self.versions.copy_to_shadow(route, feeds, outputs)
        respond = self.versions.respond[route.tag]

        def answer(rows: dict) -> Any:
            self.versions.count(route, "/predict_batched", len(next(iter(rows.values()))))
            return respond(rows)

        return BatchPredictions(outputs, answer)

    @bentoml.api(input_spec=FileRequest)
    def predict_file(self, file: Path, ctx: bentoml.Context) -> Path:
        """Batch inference on a CSV (columns named in /metadata's signature) or a .npy file."""
        # Sync: BentoML runs it in a worker thread, so the event loop keeps serving.
        try:
            model, route = self.versions.choose(ctx.request.headers, client_key(ctx.request))
            result, rows = predict_file(
                file,
                Path(request_temp_dir()),
                SIGNATURE,
                model.run,
                SETTINGS.file_chunk_rows,
                SETTINGS.max_csv_line_bytes,
            )
        except ServingError as exc:
            return refused(exc, ctx)
        self.versions.count(route, "/predict_file", rows)
        ctx.response.headers["X-Model"] = route.tag
        return result


def refused(exc: ServingError, ctx: bentoml.Context) -> Any:
    ctx.response.status_code = exc.status  # BentoML sets a context's status on the response
    return error_response(exc)


# Outermost first: every error answer's format, count and log line; the drain's Connection:
# close; batching's 503; who may call; what they send.
OnnxModelService.add_asgi_middleware(ErrorContract)
OnnxModelService.add_asgi_middleware(DrainMiddleware)
OnnxModelService.add_asgi_middleware(BatchingRefusal, retry_after_s=SETTINGS.retry_after_s)
OnnxModelService.add_asgi_middleware(JsonNotFound)
if SETTINGS.api_key_hashes:
    OnnxModelService.add_asgi_middleware(ApiKeyGuard, hashes=SETTINGS.api_key_hashes)
OnnxModelService.add_asgi_middleware(ContentTypeGuard)
OnnxModelService.add_asgi_middleware(BodyBudget, settings=SETTINGS)
OnnxModelService.add_asgi_middleware(CompleteDocs)
