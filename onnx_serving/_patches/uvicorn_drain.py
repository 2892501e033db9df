"""Graceful drain on SIGTERM for a BentoML 1.4 (uvicorn + httptools) worker.

Stock shutdown (uvicorn.Server.shutdown) closes idle keep-alive connections at once,
without telling the client, and the worker's copy of the listening socket closes while the
circus arbiter keeps its own copy listening; both reset requests clients had already sent.
With DRAIN_SECONDS > 0 (the default), SIGTERM to a worker instead:

1. marks the worker draining: /readyz answers 503 (the service's __is_ready__), and every
   response carries `Connection: close` (DrainMiddleware), so uvicorn closes each connection
   right after its response and the client, told so, opens a new one for its next request;
2. keeps serving, new connections included, for DRAIN_SECONDS;
3. stops listening: accepts what the kernel has already queued, then shutdown(SHUT_RD) on
   the shared listening socket, which stops it listening for every process holding it (the
   arbiter and the other workers too), so later connects are refused, not queued and reset;
4. waits up to DRAIN_CLOSE_GRACE seconds for the remaining connections to get their last
   response (each closes after it), then hands over to uvicorn's own shutdown.

A second SIGTERM during the drain shuts down at once. One race remains in step 3: a
connection the kernel completes in the microseconds between the last accept and the
shutdown is reset rather than refused; the service never read its request, and behind a
load balancer (which stops sending once /readyz says 503) no new connection comes then.

This leans on uvicorn's internals (Server.servers, server_state.connections,
config.http_protocol_class, its SIGTERM handler): PATCH names them, install() checks them
before the service starts, and tests/test_faults.py proves the drain on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

from onnx_serving._patches import Patch, Target
from onnx_serving.config import settings

logger = logging.getLogger("bentoml.onnx_serving.drain")


class Drainer:
    def __init__(self, drain_seconds: float, close_grace: float) -> None:
        self.drain_seconds = drain_seconds
        self.close_grace = close_grace
        self.draining = False
        self._server: Any = None  # the uvicorn.Server running this worker
        self._uvicorn_exit: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sig = signal.SIGTERM
        self._tasks: set[asyncio.Task] = set()
        self._hooks: list[tuple[Any, Any]] = []

    def install(self) -> None:
        """Take over SIGTERM from uvicorn. Call in the worker's event loop, during startup.

        uvicorn.Server.serve installs its handler with signal.signal (capture_signals) before
        the lifespan starts, so here the current handler is its bound handle_exit.
        """
        if self.drain_seconds <= 0:
            return
        handler = signal.getsignal(signal.SIGTERM)
        server = getattr(handler, "__self__", None)
        if server is None or not hasattr(server, "server_state"):
            logger.warning("SIGTERM handler is not uvicorn's (%r); no drain on SIGTERM", handler)
            return
        self._server, self._uvicorn_exit = server, handler
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        # uvicorn restores its predecessor's handlers when serve() returns.

    def on_drain(self, at_once: Any, after: Any) -> None:
        """Another server of this worker drained with HTTP: `await at_once()` when SIGTERM
        arrives, `await after(close_grace)` when HTTP stops listening (the gRPC server)."""
        self._hooks.append((at_once, after))

    def _on_sigterm(self, sig: int, frame: Any) -> None:
        if self.draining:
            self._uvicorn_exit(sig, frame)  # second SIGTERM: stop now
            return
        self.draining = True
        self._sig = sig
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, self._drain())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        logger.info(
            "SIGTERM: draining for %.1fs (Connection: close, /readyz 503)", self.drain_seconds
        )
        for at_once, _ in self._hooks:
            await at_once()
        await asyncio.sleep(self.drain_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_grace
        self._stop_listening()
        for _, after in self._hooks:  # awaited below, with the connections left
            self._spawn(after(self.close_grace))
        state = self._server.server_state
        while (state.connections or len(self._tasks) > 1) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        logger.info("drain over, %d connection(s) left; shutting down", len(state.connections))
        self._uvicorn_exit(self._sig, None)

    def _stop_listening(self) -> None:
        server = self._server
        listeners = [
            socket.socket(fileno=os.dup(s.fileno())) for srv in server.servers for s in srv.sockets
        ]
        for srv in server.servers:
            srv.close()  # this worker stops accepting (uvicorn's shutdown does it again, harmless)
        for lsock in listeners:
            lsock.setblocking(False)
            # Adopt what the kernel already accepted: shutdown would reset those connections.
            while True:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # EINVAL: another worker already stopped the listener
                    break
                conn.setblocking(False)
                self._spawn(self._loop.connect_accepted_socket(self._make_protocol, conn))
            # Stop listening for every process that shares this socket (arbiter, workers):
            # later connects are refused instead of queued behind nobody.
            with contextlib.suppress(OSError):  # already stopped by another worker
                lsock.shutdown(socket.SHUT_RD)
            lsock.close()

    def _make_protocol(self) -> asyncio.Protocol:
        # What uvicorn.Server.startup's create_protocol builds.
        server = self._server
        return server.config.http_protocol_class(
            config=server.config, server_state=server.server_state, app_state=server.lifespan.state
        )


DRAINER = Drainer(settings().drain_seconds, settings().drain_close_grace_s)


class DrainMiddleware:
    """ASGI middleware: while draining, every response says `Connection: close`.

    uvicorn's httptools protocol honours an app's `Connection: close`: it marks the cycle
    not keep-alive and closes the transport once the response is written.
    """

    def __init__(self, app: Any, drainer: Drainer = DRAINER) -> None:
        self.app = app
        self.drainer = drainer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.drainer.drain_seconds <= 0:
            await self.app(scope, receive, send)
            return
        drainer = self.drainer

        async def send_maybe_close(message: dict) -> None:
            # Decided when the response starts, so requests in flight at SIGTERM get it too.
            if message["type"] == "http.response.start" and drainer.draining:
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_maybe_close)


def _in_effect() -> bool:
    """Taken over in this worker (by the service's start-up, in the worker's loop)."""
    return DRAINER.drain_seconds <= 0 or DRAINER._server is not None


PATCH = Patch(
    name="uvicorn-drain",
    why="SIGTERM drains (readyz 503, Connection: close, stop listening) instead of resetting "
    "keep-alive connections",
    upstream="to file at Kludex/uvicorn: 'shutdown closes idle keep-alive connections without "
    "telling the client and the worker's listening socket closes while a supervisor's copy "
    "keeps listening, so requests already sent are reset; reproduce: 2 workers under "
    "keep-alive load, SIGTERM one; fix: a drain phase (Connection: close, shutdown(SHUT_RD))'",
    versions={"uvicorn": "0.54.0"},
    targets=(
        Target(
            "uvicorn.server",
            "Server",
            uses=("self.servers", "self.server_state", "def handle_exit", "self.lifespan"),
        ),
        Target("uvicorn.server", "Server.capture_signals", uses=("signal.signal",)),
        Target("uvicorn.server", "ServerState", uses=("self.connections",)),
        Target("uvicorn.config", "Config.load", uses=("self.http_protocol_class",)),
    ),
    apply=lambda: None,  # DRAINER.install(), in the worker's event loop at start
    in_effect=_in_effect,
)
