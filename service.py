"""The BentoML service: one ONNX model over HTTP.

    POST /predict          real time, no queue
    POST /predict_batched  the same contract, through BentoML's adaptive batching
    POST /predict_file     a large CSV or .npy file, streamed through in chunks
    POST /predict_binary   little-endian float32 in and out, for large requests
    GET  /metadata         which model answers, its hash, metrics and signature

Data flows one way: HTTP body -> validation (onnx_serving.validation) -> the one
ONNX Runtime session (onnx_serving.runner) -> response.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import WrapValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onnx_serving import model_store
from onnx_serving.config import settings
from onnx_serving.validation import (
    BatchPredictions,
    ContentTypeGuard,
    InvalidInput,
    PredictResponse,
    binary_rows,
    request_model,
)

with bentoml.importing():
    import numpy as np

    from onnx_serving.batch_files import predict_file, spool_upload
    from onnx_serving.runner import ModelRunner

SETTINGS = settings()
# Resolve and check the model here, in the `bentoml serve` process itself: a missing model
# or a hash mismatch then stops the command at once, instead of a worker failing at start
# and being restarted forever.
STORED = model_store.get_verified(SETTINGS.model_ref)
MODEL = bentoml.models.BentoModel(str(STORED.tag))
# Requests are checked against the served model's width before they reach it; batched
# requests also against the batch size, so that BentoML never has to split one.
N_FEATURES = STORED.info.metadata["signature"]["n_features"]
PredictRequest = request_model(N_FEATURES)
BatchedRequest = request_model(N_FEATURES, SETTINGS.batch_max_size, "BATCH_MAX_SIZE")
UploadedFile = Annotated[Path, WrapValidator(spool_upload)]


def bad_request(exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def metadata(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(service.runner.default.info)


async def predict_binary(request: Request) -> Response:
    """Little-endian float32 rows in, float32 predictions out: no JSON to parse or write.

    A plain route rather than a BentoML API: BentoML's API layer would decode the body
    through its JSON/multipart serde, which is what this route exists to skip.
    """
    model = bentoml.get_current_service().model
    try:
        x = binary_rows(await request.body(), model.n_features or 1, SETTINGS.max_values)
        y = model.run(x)
    except InvalidInput as exc:
        return bad_request(exc)
    return Response(
        np.ascontiguousarray(y, dtype="<f4").tobytes(),
        media_type="application/octet-stream",
        headers={"X-Model": model.tag, "X-Shape": ",".join(map(str, y.shape))},
    )


# Routes BentoML's @bentoml.api can't express: a GET, and a raw binary body.
plain_routes = Starlette(
    routes=[
        Route("/metadata", metadata, methods=["GET"]),
        Route("/predict_binary", predict_binary, methods=["POST"]),
    ]
)


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="onnx_model",
    workers=SETTINGS.workers,
    traffic={"timeout": 300},
    # Per-request access log lines and spans cost more than the model (README, Performance).
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={"excluded_urls": [] if SETTINGS.trace_predictions else ["/predict"]},
    labels={"project": "onnx-bento-service"},
)
class OnnxModelService:
    # A class attribute, so that `bentoml build` packs the model into the bento.
    model_ref = MODEL

    def __init__(self) -> None:
        # STORED was verified at import; loading and warm-up finish before /readyz turns 200.
        self.runner = ModelRunner(SETTINGS)
        self.model = self.runner.load(STORED)

    @bentoml.api(input_spec=PredictRequest)
    async def predict(self, x: np.ndarray) -> PredictResponse:
        """Real-time prediction: rows in, predictions out, in the same order."""
        # async and inline: a microsecond-scale ONNX call is cheaper than a thread hop.
        return PredictResponse.from_array(self.model.run(x), self.model.tag)

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.batch_max_size,
        max_latency_ms=SETTINGS.batch_max_latency_ms,
        input_spec=BatchedRequest,
        output_spec=PredictResponse,
    )
    async def predict_batched(self, x: np.ndarray) -> BatchPredictions:
        """The same contract as /predict, served through BentoML's adaptive batching.

        Requests that arrive together are stacked along rows into `x`, run once, and
        handed back a slice each, so every caller gets exactly its own rows.
        """
        return BatchPredictions(self.model.run(x), self.model.tag)

    @bentoml.api
    def predict_file(self, file: UploadedFile) -> Path:
        """Batch inference on a CSV (with an `x` column) or a .npy file of floats."""
        # Sync: BentoML runs it in a worker thread, so the event loop keeps serving.
        try:
            return predict_file(
                file, file.parent, self.model.run, chunk_rows=SETTINGS.file_chunk_rows
            )
        except InvalidInput as exc:
            return bad_request(exc)


OnnxModelService.add_asgi_middleware(ContentTypeGuard)
