"""The gRPC server beside BentoML's HTTP server, in every worker: the Open Inference Protocol
(v2_grpc.py) and the standard health service, on GRPC_PORT (0: off).

BentoML 1.4 serves no gRPC for `@bentoml.service` classes (bentoml/BentoML#5607, #4634), so
each worker starts a `grpc.aio` server in its own event loop when it starts and stops it
when it stops; the workers share the port through SO_REUSEPORT, gRPC's default on Linux,
and the kernel spreads connections among them. Its hardening comes from the same settings
as REST's:

- message size: a request up to the larger of the JSON and binary body limits (V2's own,
  route_table.body_limit), an answer up to MAX_OUTPUT_BYTES; past them gRPC answers
  RESOURCE_EXHAUSTED before a handler runs;
- overload: at most MAX_IN_FLIGHT calls at once per worker, RESOURCE_EXHAUSTED past it,
  before any work is done;
- API keys: the same keys, as call metadata (`authorization: Bearer KEY` or `x-api-key`),
  UNAUTHENTICATED without one; health and liveness stay open, as REST's probes do;
- deadlines: a call whose deadline has passed is not run (DEADLINE_EXCEEDED), and gRPC
  cancels a call whose client is gone;
- SIGTERM: health turns NOT_SERVING at once (so Kubernetes' gRPC probe takes the pod out),
  and after DRAIN_SECONDS the server stops taking calls and gives those in flight
  DRAIN_CLOSE_GRACE_S to finish (the HTTP drain, _patches/uvicorn_drain.py, does the same).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from onnx_serving import errors, metrics
from onnx_serving.config import Settings
from onnx_serving.edge.guards import UNAUTHORIZED, accepted_keys, key_accepted
from onnx_serving.edge.route_table import body_limit, route_of
from onnx_serving.protocols.grpc_stubs import open_inference_pb2_grpc as pb_grpc
from onnx_serving.protocols.v2_grpc import InferenceServicer

logger = logging.getLogger("bentoml.onnx_serving.grpc")

SERVICE = "inference.GRPCInferenceService"
# Open to every caller, whatever keys are configured: probes, as REST's /livez and /readyz.
OPEN = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        f"/{SERVICE}/ServerLive",
        f"/{SERVICE}/ServerReady",
    }
)


class Observed(aio.ServerInterceptor):
    """Every call counted by method and status code and timed (GRPC_CALLS, GRPC_DURATION),
    and refused UNAUTHENTICATED without an accepted key when keys are configured."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        # Labelled children looked up once (labels() checks and joins on every call).
        self.calls: dict[tuple[str, str], Any] = {}
        self.durations: dict[str, Any] = {}
        self.wrapped: dict[str, Any] = {}  # per method: its handler, counted and timed

    def count(self, method: str, code: str, seconds: float | None = None) -> None:
        calls = self.calls.get((method, code))
        if calls is None:
            calls = self.calls[(method, code)] = metrics.GRPC_CALLS.labels(method, code)
        calls.inc()
        if seconds is not None:
            duration = self.durations.get(method)
            if duration is None:
                duration = self.durations[method] = metrics.GRPC_DURATION.labels(method)
            duration.observe(seconds)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        if self.keys and details.method not in OPEN:
            meta = dict(details.invocation_metadata or ())
            if not key_accepted(meta.get("x-api-key"), meta.get("authorization"), self.keys):
                self.count(method, "UNAUTHENTICATED")
                return REFUSAL
        wrapped = self.wrapped.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler  # unknown methods (UNIMPLEMENTED), health's Watch stream
            wrapped = self.wrapped[details.method] = self.observed(method, handler)
        return wrapped

    def observed(self, method: str, handler: Any) -> Any:
        """`handler`, counted and timed: made once per method."""
        inner = handler.unary_unary

        async def observed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                self.count(method, code.name, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _refuse(request: Any, context: Any) -> None:
    rid = errors.request_id(dict(context.invocation_metadata() or ()))
    errors.refused(401, "unauthorized", UNAUTHORIZED, "gRPC call", rid, "grpc")
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)


# The answer to a call without an accepted key, whatever its method (its body is not read).
REFUSAL = grpc.unary_unary_rpc_method_handler(_refuse)


class GrpcServer:
    """One worker's gRPC server: `start` in the worker's startup; on SIGTERM `not_serving`
    at once and `stop` when HTTP stops listening (the drain's hooks); `stop` at shutdown."""

    def __init__(self, settings: Settings, versions: Any, is_ready: Any) -> None:
        self.settings, self.versions, self.is_ready = settings, versions, is_ready
        self.server: aio.Server | None = None
        self.health: Any = None

    def options(self) -> list[tuple[str, Any]]:
        limit, _ = body_limit(route_of("/v2/models/m/infer"), self.settings)
        return [
            ("grpc.max_receive_message_length", limit),
            # An answer carries the outputs MAX_OUTPUT_BYTES allows, and their descriptions.
            ("grpc.max_send_message_length", self.settings.max_output_bytes + (1 << 20)),
            ("grpc.so_reuseport", 1),
        ]

    async def start(self) -> None:
        settings = self.settings
        server = aio.server(
            interceptors=[Observed(accepted_keys(settings))],
            options=self.options(),
            maximum_concurrent_rpcs=settings.max_in_flight,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.versions, settings, self.is_ready), server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.grpc_reflection:
            from grpc_reflection.v1alpha import reflection

            names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SystemExit(
                f"error: gRPC can't listen on {address} ({exc}): set GRPC_PORT to a free "
                "port, or GRPC_PORT=0 to serve no gRPC"
            ) from None
        await server.start()
        self.server = server
        logger.info("gRPC: the Open Inference Protocol and grpc.health.v1 on %s", address)

    async def not_serving(self) -> None:
        """Health NOT_SERVING (SIGTERM: Kubernetes' gRPC probe takes the pod out)."""
        if self.health is not None:
            await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
