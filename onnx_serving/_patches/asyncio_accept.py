"""asyncio's event loop for uvicorn's workers, accepting connections in fair bursts.

Reaches into CPython 3.11's private `BaseSelectorEventLoop._accept_connection` and
`_accept_connection2`; uvicorn's loop table (`uvicorn.config.LOOP_FACTORIES`) is pointed at
it, as BentoML lets uvicorn choose its loop ("auto").
"""

from __future__ import annotations

import asyncio

from onnx_serving._patches import Patch, Target


class FairAcceptLoop(asyncio.SelectorEventLoop):
    """asyncio's event loop, accepting as many connections per wake-up as the queue needs.

    uvloop's libuv accepts one connection per turn of the loop (libuv#3696, since 1.45): under
    overload a turn takes tens of milliseconds, and new connections, probes among them, waited
    in the kernel's queue for seconds (753 waiting, /readyz answered after 8 s, with 1,024
    clients). asyncio's own loop accepts every waiting connection at once, so with several
    workers on one socket the first to wake took a whole burst (16 keep-alive connections on
    one worker, the other idle). This one accepts one connection per wake-up while that
    empties the queue, and twice as many each time it does not, so workers share bursts and
    a deep queue is drained in a few turns.
    """

    _cap = 1
    _accepted = 0

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None,
                           backlog=100, *args):  # type: ignore[override]  # fmt: skip
        self._accepted = 0
        super()._accept_connection(protocol_factory, sock, sslcontext, server, self._cap, *args)
        self._cap = min(self._cap * 2, backlog) if self._accepted >= self._cap else 1

    def _accept_connection2(self, *args, **kwargs):  # type: ignore[override]
        self._accepted += 1
        return super()._accept_connection2(*args, **kwargs)


def fair_loop_factory(use_subprocess: bool = False) -> type[asyncio.AbstractEventLoop]:
    return FairAcceptLoop


def apply() -> None:
    import uvicorn.config

    uvicorn.config.LOOP_FACTORIES["auto"] = f"{__name__}:fair_loop_factory"


def in_effect() -> bool:
    return type(asyncio.get_running_loop()) is FairAcceptLoop


PATCH = Patch(
    name="asyncio-fair-accept",
    why="workers share bursts of connections and a deep accept queue drains in a few turns",
    upstream="uvloop: libuv accepts one connection per turn (libuv/libuv#3696), hence asyncio's "
    "loop; asyncio: to file, 'BaseSelectorEventLoop accepts up to backlog connections per "
    "wake-up, so with SO_REUSEPORT-less workers sharing a socket the first to wake takes a "
    "whole burst; reproduce with 2 uvicorn workers and 64 keep-alive clients connecting at "
    "once; fix: an accept batch size on loop.create_server'",
    versions={"uvicorn": "0.54.0"},
    python=(3, 11),
    targets=(
        Target("uvicorn.config", "LOOP_FACTORIES"),
        Target(
            "asyncio.selector_events",
            "BaseSelectorEventLoop._accept_connection",
            uses=("backlog", "self._accept_connection2(", "for _ in range(backlog)"),
        ),
        Target("asyncio.selector_events", "BaseSelectorEventLoop._accept_connection2"),
    ),
    apply=apply,
    in_effect=in_effect,
)
