"""The BentoML service: any ONNX model over HTTP.

    POST /predict          real time, no queue: {"x": ...} or {"inputs": {...}}
    POST /predict_batched  the same contract, through BentoML's adaptive batching
    POST /predict_file     a large CSV or .npy file, streamed through in chunks
    POST /predict_binary   raw little-endian tensors in and out, for large requests
    POST /predict_image    a PNG or JPEG, for image models: the top classes
    GET  /metadata         which versions are served and routed, their files, hashes, metrics
    /v2/...                the Open Inference Protocol (KServe V2), JSON and binary
    gRPC on GRPC_PORT      the same protocol over gRPC (inference.GRPCInferenceService)

Data flows one way: HTTP body -> the edge (onnx_serving.startup.edge: limits, auth) ->
validation (onnx_serving.protocols.native, .tensors, .v2) -> the one ONNX Runtime session
(onnx_serving.model.runner) -> response. `prepare()` (onnx_serving/startup.py) does everything
before the class: patches, settings, the verified versions, batching, the request models.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from pathlib import Path
from typing import Any

import bentoml
from anyio import to_thread
from starlette.datastructures import Headers
from starlette.responses import Response

from onnx_serving import _patches
from onnx_serving._patches.uvicorn_drain import DRAINER
from onnx_serving.edge.error_contract import error_response
from onnx_serving.edge.route_table import client_key
from onnx_serving.errors import ServingError
from onnx_serving.model.feeds import BatchPredictions, BatchRefusal, Feeds
from onnx_serving.model.runner import ModelRunner
from onnx_serving.protocols.files import FileRequest, predict_file
from onnx_serving.protocols.http_routes import app as plain_routes
from onnx_serving.protocols.native import responder
from onnx_serving.protocols.predict_route import PredictRoute
from onnx_serving.startup import Steps, edge, prepare
from onnx_serving.versions.served import Versions

START = prepare()
PredictRequest, PredictResponse = START.predict_request, START.predict_response
BatchedRequest = START.batched_request


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="onnx-serving",
    workers=START.settings.workers,
    traffic={"timeout": 300},
    # Per-request access log lines and spans cost more than the model (docs: Performance).
    logging={"access": {"enabled": START.settings.access_log}},
    # Patterns matched anywhere in the URL: every /predict* route and V2's .../infer.
    tracing={"excluded_urls": [] if START.settings.trace_predictions else ["/predict", "/infer"]},
    labels={"project": "onnx-serving"},
)
class OnnxServing:
    # A class attribute, so that `bentoml build` packs the (first) model into the bento.
    model_ref = bentoml.models.BentoModel(str(START.stored[0].tag))

    def __init__(self) -> None:
        # The versions were verified at import; loading and warm-up finish before /readyz
        # turns 200.
        steps = Steps("imports and prepare()")
        self.runner = ModelRunner(START.settings)
        for stored in START.stored:
            loaded = self.runner.load(stored, START.signature)
            loaded.info["batching"] = START.batching.metadata()
            loaded.info["integrity"] = START.integrity[str(stored.tag)]
        steps.done("model loaded and warmed up")
        respond = functools.partial(responder, model=PredictResponse)
        self.versions = Versions(self.runner, START.routing, respond)
        PredictRoute.bind(PredictRequest, self.answer)
        # Everything alive now (BentoML, pydantic, ONNX Runtime...) lives as long as the
        # worker: keep it out of the garbage collector's full passes, which otherwise stop the
        # worker for ~150 ms every few seconds under load, for nothing to collect.
        gc.collect()
        gc.freeze()
        gc.enable()  # the image starts Python with it off, to import faster (startup.py)
        steps.done("gc.freeze")
        steps.log("ready to serve")

    @bentoml.on_startup
    async def start_worker_tasks(self) -> None:
        # In the worker's event loop inside uvicorn's serve(): SIGTERM starts a drain, a
        # routing file is reloaded when it changes, every patch is checked in effect, and
        # the worker's gRPC server starts (GRPC_PORT; drained with HTTP).
        DRAINER.install()
        _patches.verify()
        if START.routing.file is not None:
            self.watcher = asyncio.get_running_loop().create_task(START.routing.watch())
        if START.settings.grpc_port:
            # Imported here, in the workers only: `bentoml serve` itself starts faster.
            from onnx_serving.protocols.grpc_server import GrpcServer

            self.grpc = GrpcServer(START.settings, self.versions, self.ready)
            await self.grpc.start()
            DRAINER.on_drain(self.grpc.not_serving, self.grpc.stop)

    @bentoml.on_shutdown
    async def stop_worker_tasks(self) -> None:
        if START.settings.grpc_port:
            await self.grpc.stop(START.settings.drain_close_grace_s)

    def ready(self) -> bool:
        """Loaded, warmed up and not draining: V2's readiness over REST and gRPC."""
        return bool(self.runner.models) and not DRAINER.draining

    async def __is_ready__(self) -> bool:
        # /readyz answers 503 while the worker drains after SIGTERM.
        return self.ready()

    @bentoml.api(input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, feeds: Feeds, ctx: bentoml.Context) -> PredictResponse:
        """Real-time prediction: rows in, predictions out, in the same order. The version
        that answers: `X-Model-Version`, else the routing (default, canary by
        `X-Request-Key`); `X-Model` and the body's `model` name it."""
        # Over HTTP, PredictRoute answers it without BentoML's per-request API path.
        response = self.answer(feeds, ctx.request.headers, client_key(ctx.request))
        ctx.response.status_code = response.status_code
        return response

    def answer(self, feeds: Feeds, headers: Headers, client: str) -> Response:
        """/predict's whole answer: the version chosen, the model run, the response built."""
        try:
            model, route = self.versions.choose(headers, client)
            # Inline: a microsecond-scale ONNX call is cheaper than a thread hop.
            outputs = model.run(feeds)
        except ServingError as exc:
            return error_response(exc)
        self.versions.answered(route, "/predict", feeds, outputs)
        return self.versions.respond[route.tag](outputs)

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=START.batching.max_batch_size,
        max_latency_ms=START.batching.max_latency_ms,
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
            if START.batching.in_thread:  # a model call of milliseconds: see batching.Batching
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
                Path(ctx.temp_dir),
                START.signature,
                model.run,
                START.settings.file_chunk_rows,
                START.settings.max_csv_line_bytes,
            )
        except ServingError as exc:
            return refused(exc, ctx)
        self.versions.count(route, "/predict_file", rows)
        ctx.response.headers["X-Model"] = route.tag
        return result


def refused(exc: ServingError, ctx: bentoml.Context) -> Any:
    ctx.response.status_code = exc.status  # BentoML sets a context's status on the response
    return error_response(exc)


for middleware, options in edge(START.settings):
    OnnxServing.add_asgi_middleware(middleware, **options)
