"""The BentoML service: any ONNX model over HTTP.

    POST /predict          real time, no queue: {"x": ...} or {"inputs": {...}}
    POST /predict_batched  the same contract, through BentoML's adaptive batching
    POST /predict_file     a large CSV or .npy file, streamed through in chunks
    POST /predict_binary   raw little-endian tensors in and out, for large requests
    POST /predict_image    a PNG or JPEG, for image models: the top classes
    GET  /metadata         which model answers, its file, hash, metrics and signature
    /v2/...                the Open Inference Protocol (KServe V2), JSON and binary

Data flows one way: HTTP body -> validation (onnx_serving.validation, .tensors, .v2)
-> the one ONNX Runtime session (onnx_serving.runner) -> response.
"""

from __future__ import annotations

import gc
from pathlib import Path

import bentoml

from onnx_serving import batching, bentoml_fixes, dispatcher, http_protocol, model_store
from onnx_serving.config import settings
from onnx_serving.drain import DRAINER, DrainMiddleware
from onnx_serving.feeds import BatchPredictions, Feeds
from onnx_serving.guards import (
    ApiKeyGuard,
    BatchingRefusal,
    BodyLimit,
    ContentTypeGuard,
    JsonNotFound,
)
from onnx_serving.openapi import CompleteDocs
from onnx_serving.routes import app as plain_routes
from onnx_serving.tensors import InvalidInput
from onnx_serving.validation import request_model, responder, response_model

with bentoml.importing():
    from anyio import to_thread
    from bentoml._internal.context import server_context
    from starlette.responses import JSONResponse

    from onnx_serving.batch_files import FileRequest, predict_file
    from onnx_serving.runner import ModelRunner

# uvicorn's HTTP protocol with load shedding before the app (MAX_QUEUE_MS, MAX_IN_FLIGHT) and
# the header and body read timeouts it lacks; BentoML's request timeout without its timer
# leak (onnx_serving/bentoml_fixes.py).
http_protocol.install()
bentoml_fixes.apply()
dispatcher.apply()
SETTINGS = settings()
# Resolve and check the model here, in the `bentoml serve` process itself: a missing model
# or a hash mismatch then stops the command at once, instead of a worker failing at start
# and being restarted forever.
STORED = model_store.get_verified(SETTINGS.model_ref)
MODEL = bentoml.models.BentoModel(str(STORED.tag))
SIGNATURE = model_store.signature_of(STORED)
if server_context.worker_index is None:
    # Not a worker: `bentoml serve` itself (or `bentoml build`). A model that can't run would
    # fail every worker at start, and BentoML would restart them forever: try it here, once,
    # so the command stops with the reason instead.
    ModelRunner(SETTINGS).load(STORED, SIGNATURE)
# Adaptive batching as measured for this model at import, unless the environment says.
BATCHING = batching.resolve(
    STORED.info.metadata, SETTINGS.batch_max_size, SETTINGS.batch_max_latency_ms
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
    # A class attribute, so that `bentoml build` packs the model into the bento.
    model_ref = MODEL

    def __init__(self) -> None:
        # STORED was verified at import; loading and warm-up finish before /readyz turns 200.
        self.runner = ModelRunner(SETTINGS)
        self.model = self.runner.load(STORED, SIGNATURE)
        self.model.info["batching"] = BATCHING  # /metadata: what /predict_batched runs with
        self.respond = responder(SIGNATURE, self.model.tag, PredictResponse)
        # Everything alive now (BentoML, pydantic, ONNX Runtime...) lives as long as the
        # worker: keep it out of the garbage collector's full passes, which otherwise stop the
        # worker for ~150 ms every few seconds under load, for nothing to collect.
        gc.collect()
        gc.freeze()

    @bentoml.on_startup
    async def install_drain(self) -> None:
        # Runs in the worker's event loop inside uvicorn's serve(): SIGTERM starts a drain.
        DRAINER.install()

    async def __is_ready__(self) -> bool:
        # /readyz answers 503 while the worker drains after SIGTERM.
        return not DRAINER.draining

    @bentoml.api(input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, feeds: Feeds) -> PredictResponse:
        """Real-time prediction: rows in, predictions out, in the same order."""
        # async and inline: a microsecond-scale ONNX call is cheaper than a thread hop.
        return self.respond(self.model.run(feeds))

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=BATCHING["max_batch_size"],
        max_latency_ms=BATCHING["max_latency_ms"],
        input_spec=BatchedRequest,
        output_spec=PredictResponse,
    )
    async def predict_batched(self, feeds: Feeds) -> BatchPredictions:
        """The same contract as /predict, served through BentoML's adaptive batching.

        Requests that arrive together are stacked along rows, run once, and handed back
        a slice each, so every caller gets exactly its own rows.
        """
        if BATCHING["in_thread"]:  # a model call of milliseconds: see batching.resolve
            return BatchPredictions(await to_thread.run_sync(self.model.run, feeds), self.respond)
        return BatchPredictions(self.model.run(feeds), self.respond)

    @bentoml.api(input_spec=FileRequest)
    def predict_file(self, file: Path) -> Path:
        """Batch inference on a CSV (columns named in /metadata's signature) or a .npy file."""
        # Sync: BentoML runs it in a worker thread, so the event loop keeps serving.
        try:
            return predict_file(
                file, file.parent, SIGNATURE, self.model.run, SETTINGS.file_chunk_rows
            )
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)


# Outermost first: the drain's Connection: close, batching's 503, who may call, what they send.
OnnxModelService.add_asgi_middleware(DrainMiddleware)
OnnxModelService.add_asgi_middleware(BatchingRefusal, retry_after_s=SETTINGS.retry_after_s)
OnnxModelService.add_asgi_middleware(JsonNotFound)
if SETTINGS.api_key_hashes:
    OnnxModelService.add_asgi_middleware(ApiKeyGuard, hashes=SETTINGS.api_key_hashes)
OnnxModelService.add_asgi_middleware(ContentTypeGuard)
OnnxModelService.add_asgi_middleware(BodyLimit, settings=SETTINGS)
OnnxModelService.add_asgi_middleware(CompleteDocs)
