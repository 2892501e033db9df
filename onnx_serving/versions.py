"""The versions a worker serves: which one answers a request (routing.py), the answer's HTTP
response, what it is counted as (metrics.py), and the shadow's copy (shadow.py).

Every entry point (the native API, /predict_binary, images, files, V2) asks `choose` for a
model and reports with `answered`, so routing and metrics are the same everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics
from .errors import ServingError
from .feeds import Feeds
from .routing import Route, Router, RoutingError
from .runner import LoadedModel, ModelRunner
from .shadow import Shadow
from .validation import responder

VERSION_HEADER = "x-model-version"
KEY_HEADER = "x-request-key"


def client_key(request: Any) -> str:
    """The client's address: the canary's key when no X-Request-Key is sent ("" on a Unix
    socket, which has none)."""
    return request.client.host if request.client else ""


class Versions:
    def __init__(self, runner: ModelRunner, router: Router, response_model: Any) -> None:
        self.runner, self.router = runner, router
        self.respond = {
            tag: responder(m.signature, tag, response_model) for tag, m in runner.models.items()
        }
        self.shadow = Shadow()

    def choose(self, headers: Any, client: str | None) -> tuple[LoadedModel, Route]:
        """The model for a request: `X-Model-Version`, else the canary by `X-Request-Key`
        (or the client's address), else the default. A 404 ServingError for an unknown
        version."""
        key = headers.get(KEY_HEADER) or client or ""
        try:
            route = self.router.pick(headers.get(VERSION_HEADER), key)
        except RoutingError as exc:
            raise ServingError(str(exc), 404, "version") from None
        return self.runner.models[route.tag], route

    def default(self) -> tuple[LoadedModel, Route]:
        route = Route(self.router.default, "default")
        return self.runner.models[route.tag], route

    def count(self, route: Route, endpoint: str, rows: int) -> None:
        metrics.PREDICTIONS.labels(version=route.tag, endpoint=endpoint, route=route.how).inc()
        metrics.ROWS.labels(version=route.tag, endpoint=endpoint).inc(rows)

    def copy_to_shadow(self, route: Route, feeds: Feeds, outputs: dict[str, np.ndarray]) -> None:
        """A copy of what the default answered, for the shadow version, if there is one."""
        shadow = self.router.shadow
        if shadow and route.how == "default":
            self.shadow.submit(self.runner.models[shadow], feeds, outputs)

    def answered(
        self, route: Route, endpoint: str, feeds: Feeds, outputs: dict[str, np.ndarray]
    ) -> None:
        """Count the answer, and hand the shadow its copy."""
        self.count(route, endpoint, feeds.rows)
        self.copy_to_shadow(route, feeds, outputs)
