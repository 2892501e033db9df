"""What the service module prepares before BentoML builds the service: `prepare()`.

Patches checked and applied, settings read, the served versions resolved and verified, the
routing read, a trial load in the `bentoml serve` process itself, adaptive batching chosen
and the request and response models built from the model's signature. Anything wrong stops
the command at once with one `error:` line saying what to do, instead of a worker failing
at start and being restarted forever.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel

from onnx_serving import _patches
from onnx_serving.config import Settings, settings
from onnx_serving.edge.error_contract import ErrorContract, install_log_filters
from onnx_serving.edge.guards import Guards
from onnx_serving.model import signing
from onnx_serving.model import store as model_store
from onnx_serving.model.batching import Batching, resolve
from onnx_serving.model.runner import ModelRunner
from onnx_serving.model.signature import InvalidModel, Signature
from onnx_serving.model.signing import SigningError
from onnx_serving.protocols.native import request_model, response_model
from onnx_serving.protocols.openapi import CompleteDocs
from onnx_serving.protocols.predict_route import PredictRoute
from onnx_serving.versions.router import Router, RoutingError

logger = logging.getLogger("bentoml.onnx_serving.startup")


@dataclass(frozen=True)
class Prepared:
    settings: Settings
    stored: list[bentoml.Model]  # the served versions, the default first
    signature: Signature  # shared by every served version
    routing: Router
    batching: Batching  # as measured for the first version at import, unless the env says
    integrity: dict[str, dict[str, str]]  # per served version: the check made, and its signer
    predict_request: type[BaseModel]
    batched_request: type[BaseModel]
    predict_response: type[BaseModel]


def prepare() -> Prepared:
    steps = Steps()
    # A worker, or `bentoml serve` itself (or `bentoml build`), which runs no app.
    worker = bentoml.server_context.worker_index is not None
    # The workers check and patch every private name; `bentoml serve` itself the versions.
    _patches.install(worker=worker)
    install_log_filters()
    steps.done("patches")
    try:
        config = settings()
        refs = [t.strip() for t in config.model_tags.split(",") if t.strip()]
        stored, signature = model_store.get_verified_set(refs or [config.model_ref])
        routing = Router.from_settings([str(s.tag) for s in stored], config.routing_file)
        integrity = {str(s.tag): check_integrity(s, config.verify_keys) for s in stored}
        steps.done("versions verified (" + ("signature" if config.verify_keys else "SHA-256") + ")")
        if not worker:
            # A model that can't run would fail every worker at start: try it here, once.
            for version in stored:
                ModelRunner(config).load(version, signature)
            steps.done("trial run")
    except (
        model_store.ModelNotFound,
        model_store.ModelIntegrityError,
        InvalidModel,
        RoutingError,
        SigningError,
        RuntimeError,
    ) as exc:
        raise SystemExit(f"error: {exc}") from None
    batching = resolve(stored[0].info.metadata, config.batch_max_size, config.batch_max_latency_ms)
    prepared = Prepared(
        settings=config,
        stored=stored,
        signature=signature,
        routing=routing,
        batching=batching,
        integrity=integrity,
        predict_request=request_model(signature, config.max_values),
        batched_request=request_model(
            signature, config.max_values, batching.max_batch_size, "BATCH_MAX_SIZE"
        ),
        predict_response=response_model(signature),
    )
    steps.done("request models")
    steps.log("prepared")
    if not worker:
        # The image starts every Python process with the garbage collector off
        # (Dockerfile.template): importing BentoML and the service makes hundreds of
        # thousands of objects, and the collector's passes over them cost 15-20 % of the
        # imports. A worker turns it back on once it is ready (gc.freeze, service.py);
        # `bentoml serve` itself here.
        gc.enable()
    return prepared


def check_integrity(stored: Any, trusted: list[Path]) -> dict[str, str]:
    """A version's signature verified against `trusted` (before it is loaded), or, with no
    trusted keys, the SHA-256 check get_verified made: what /metadata reports."""
    if not trusted:
        return {"check": "sha256"}
    who = signing.verify(Path(stored.path), trusted, str(stored.tag))
    if bentoml.server_context.worker_index is None:  # once, not once per worker
        logger.info(
            "model %s: signature verified: %s (with %s)",
            stored.tag,
            who["signed_by"],
            who["verified_with"],
        )
    return {
        "check": "signature",
        "signed_by": who["signed_by"],
        "verified_with": who["verified_with"],
    }


class Steps:
    """What each start-up step took, logged as one line: cold start's figures come from it
    (the image test prints them). The first figure is the process's age when the steps
    began (`before`: Python, BentoML and the service's imports, for prepare())."""

    def __init__(self, before: str = "imports") -> None:
        import psutil

        self.started = time.perf_counter()
        self.taken = [(before, time.time() - psutil.Process().create_time())]

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.taken.append((step, now - self.started))
        self.started = now

    def log(self, what: str) -> None:
        where = bentoml.server_context.worker_index
        who = "serve process" if where is None else f"worker {where}"
        figures = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in self.taken)
        logger.info("start-up (%s): %s: %s", who, what, figures)


def edge(config: Settings) -> list[tuple[type, dict[str, Any]]]:
    """The ASGI middleware before the APIs, outermost first: every error answer's format,
    count and log line; the drain's Connection: close; the guards (keys, media types, body
    budgets, JSON 404s, batching's 503); the complete OpenAPI document; /predict's own
    route."""
    from onnx_serving._patches.uvicorn_drain import DrainMiddleware

    return [
        (ErrorContract, {}),
        (DrainMiddleware, {}),
        (Guards, {"settings": config}),
        (CompleteDocs, {}),
        (PredictRoute, {}),
    ]
