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
- overload: ModelInfer calls take slots of the worker's one admission control, with REST's
  prediction requests (edge/admission.py: MAX_IN_FLIGHT, shed on a lasting queue); past it
  RESOURCE_EXHAUSTED, before the call's message is read;
- slow senders: a call takes its slot when the worker picks it up, but gives it back if its
  message has not arrived RECEIVE_SLOT_S later, until it has (as a slow REST body holds no
  slot), so calls that stall can't lock others out; a message that has not arrived within
  HTTP_BODY_TIMEOUT ends the call (DEADLINE_EXCEEDED), and a connection carries at most
  MAX_STREAMS calls at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS); a connection that
  sends no HTTP/2 preface within HTTP_HEADER_TIMEOUT is closed;
- API keys: the same keys, as call metadata (`authorization: Bearer KEY` or `x-api-key`),
  UNAUTHENTICATED without one; health and liveness stay open, as REST's probes do;
- deadlines: a call whose deadline has passed is not run (DEADLINE_EXCEEDED), and gRPC
  cancels a call whose client is gone;
- SIGTERM: health turns NOT_SERVING at once (so Kubernetes' gRPC probe takes the pod out),
  and after DRAIN_SECONDS the server stops taking calls and gives those in flight
  DRAIN_CLOSE_GRACE_S to finish (the HTTP drain, _patches/uvicorn_drain.py, does the same).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from onnx_serving import metrics
from onnx_serving.config import Settings
from onnx_serving.edge.admission import Admission, worker_admission
from onnx_serving.edge.guards import UNAUTHORIZED, accepted_keys, key_accepted
from onnx_serving.edge.route_table import body_limit, route_of
from onnx_serving.protocols.grpc_stubs import open_inference_pb2_grpc as pb_grpc
from onnx_serving.protocols.v2_grpc import InferenceServicer, refuse

logger = logging.getLogger("bentoml.onnx_serving.grpc")

SERVICE = "inference.GRPCInferenceService"
ADMITTED = frozenset({"ModelInfer"})  # the methods that take an admission slot (predictions)
RECEIVE_SLOT_S = 0.25  # a message this late to arrive gives its call's slot back until it has
MAX_STREAMS = 100  # calls at once on one connection (RFC 9113's recommended least)
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
    """Every call counted by method and status code and timed (GRPC_CALLS, GRPC_DURATION);
    refused UNAUTHENTICATED without an accepted key when keys are configured; its message
    read under the admission and receive rules above."""

    def __init__(self, keys: list[bytes], admission: Admission, receive_timeout_s: float) -> None:
        self.keys = keys
        self.admission, self.receive_timeout_s = admission, receive_timeout_s
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
            if handler is None or handler.request_streaming:
                return handler  # unknown methods (UNIMPLEMENTED), reflection's stream
            wrapped = self.wrapped[details.method] = self.observed(method, handler)
        return wrapped

    def observed(self, method: str, handler: Any) -> Any:
        """`handler` (one request message; one answer, or a stream of them: health's Watch)
        as a call that reads and parses its own message (the same on the wire), under the
        admission and receive rules, counted and timed: made once per method."""
        # Both kinds are coroutines: a stream of answers is written by the handler itself.
        streaming = handler.response_streaming
        inner = handler.unary_stream if streaming else handler.unary_unary
        parse, admission = handler.request_deserializer, self.admission
        admitted = method in ADMITTED

        async def observed(requests: Any, context: Any) -> Any:
            started = time.perf_counter()
            receive = Receive(admission, admitted and admission.admit(), self.receive_timeout_s)
            code = None
            try:
                if admitted and not receive.holding:
                    return await overloaded(admission, context)
                raw = await receive.message(context, method)
                request = await parsed(parse, raw, context, method)
                if admitted and not receive.holding:
                    if not admission.admit():
                        return await overloaded(admission, context)
                    receive.holding = True
                return await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away, or the server stops
                raise
            finally:
                if receive.holding:
                    admission.done()
                code = code or (context.code() or grpc.StatusCode.OK).name
                self.count(method, code, time.perf_counter() - started)

        # The message comes as bytes (request_deserializer None): `parsed` parses it.
        make = (
            grpc.stream_stream_rpc_method_handler
            if streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(observed, response_serializer=handler.response_serializer)


async def parsed(parse: Any, raw: bytes, context: Any, method: str) -> Any:
    """The request message parsed; a message that is not the method's protobuf is refused
    INVALID_ARGUMENT (gRPC's own parse would answer UNKNOWN and log a traceback)."""
    if parse is None:
        return raw
    try:
        return parse(raw)
    except DecodeError as exc:
        message = f"the request message is not a valid protobuf of the method's type: {exc}"
        return await refuse(context, 400, "schema", message, method)


class Receive:
    """One call's request message, read in its own task: a slot held while the message is
    on time, given back once it is RECEIVE_SLOT_S late; the call cut once it is
    `timeout_s` late."""

    __slots__ = ("admission", "cut", "holding", "receiving", "timeout_s", "timer")

    def __init__(self, admission: Admission, holding: bool, timeout_s: float) -> None:
        self.admission, self.holding, self.timeout_s = admission, holding, timeout_s
        self.receiving = self.cut = False
        self.timer: asyncio.TimerHandle | None = None

    async def message(self, context: Any, method: str) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.timer = task.get_loop().call_later(RECEIVE_SLOT_S, self._late, task)
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if not self.cut:
                raise  # the client went away (gRPC cancels the call's task)
            task.uncancel()
            limit = f"HTTP_BODY_TIMEOUT={self.timeout_s:g}"
            message = f"the request message did not arrive within {limit} s: send it faster"
            metrics.SLOW_BODIES.inc()
            return await refuse(context, 408, "slow_body", message, method)
        finally:
            self.timer.cancel()
            if self.receiving:
                self.admission.receiving -= 1
        if request is aio.EOF:
            # Mostly a client gone mid-message: gRPC's cancellation of the call, delivered
            # with the end of its stream, lands at this yield, before a refusal is counted.
            await asyncio.sleep(0)
            message = "the call sent no request message"
            return await refuse(context, 400, "schema", message, method)
        return request

    def _late(self, task: asyncio.Task) -> None:
        # RECEIVE_SLOT_S after the call was picked up: its slot goes back until the message
        # is whole, and the call is cut when HTTP_BODY_TIMEOUT has passed.
        if self.holding:
            self.admission.done()
            self.holding = False
        self.receiving = True
        self.admission.receiving += 1
        if self.timeout_s:  # HTTP_BODY_TIMEOUT=0: no limit
            wait = max(0.0, self.timeout_s - RECEIVE_SLOT_S)
            self.timer = task.get_loop().call_later(wait, self._cut, task)

    def _cut(self, task: asyncio.Task) -> None:
        self.cut = True
        task.cancel()


async def overloaded(admission: Admission, context: Any) -> None:
    """RESOURCE_EXHAUSTED for a call past the admission limit, its message unread."""
    metrics.SHED.inc()
    context.set_trailing_metadata((("retry-after", str(admission.retry_after_s)),))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, admission.why())


async def _refuse(requests: Any, context: Any) -> None:
    await refuse(context, 401, "unauthorized", UNAUTHORIZED, "call")  # whichever method


# The answer to a call without an accepted key, whatever its method (its message unread).
REFUSAL = grpc.stream_unary_rpc_method_handler(_refuse)


class GrpcServer:
    """One worker's gRPC server: `start` in the worker's startup; on SIGTERM `not_serving`
    at once and `stop` when HTTP stops listening (the drain's hooks); `stop` at shutdown."""

    def __init__(self, settings: Settings, versions: Any, is_ready: Any) -> None:
        self.settings, self.versions, self.is_ready = settings, versions, is_ready
        self.server: aio.Server | None = None
        self.health: Any = None

    def options(self) -> list[tuple[str, Any]]:
        limit, _ = body_limit(route_of("/v2/models/m/infer"), self.settings)
        options = [
            ("grpc.max_receive_message_length", limit),
            # An answer carries the outputs MAX_OUTPUT_BYTES allows, and their descriptions.
            ("grpc.max_send_message_length", self.settings.max_output_bytes + (1 << 20)),
            ("grpc.so_reuseport", 1),
            ("grpc.max_concurrent_streams", MAX_STREAMS),
        ]
        # A connection that hasn't sent HTTP/2's preface in time is closed, as REST's
        # connections that don't send their headers (HTTP_HEADER_TIMEOUT; 0: no limit).
        if header_timeout_s := self.settings.http_header_timeout_s:
            options.append(("grpc.server_handshake_timeout_ms", int(header_timeout_s * 1000)))
        return options

    async def start(self) -> None:
        settings = self.settings
        admission = worker_admission()
        admission.start()  # its ticker, if no HTTP connection started it yet
        observed = Observed(accepted_keys(settings), admission, settings.http_body_timeout_s)
        server = aio.server(interceptors=[observed], options=self.options())
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
