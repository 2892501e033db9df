"""The versions a worker serves: which one answers a request (router.py), the answer's HTTP
response, what it is counted as (metrics.py), and the shadow's copy (shadow.py).

Every entry point (the native API, /predict_binary, images, files, V2) asks `choose` for a
model and reports with `answered`, so routing and metrics are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnx_serving import metrics
from onnx_serving.errors import ServingError
from onnx_serving.model.feeds import Feeds
from onnx_serving.model.runner import LoadedModel, ModelRunner
from onnx_serving.model.signature import Signature
from onnx_serving.versions.router import Route, Router, RoutingError
from onnx_serving.versions.shadow import Shadow

VERSION_HEADER = "x-model-version"
KEY_HEADER = "x-request-key"


class Versions:
    def __init__(
        self, runner: ModelRunner, router: Router, responder: Callable[[Signature, str], Any]
    ) -> None:
        """`responder(signature, tag)`: the codec that turns a version's outputs into its
        HTTP response (the native protocol's, onnx_serving.protocols.native.responder)."""
        self.runner, self.router = runner, router
        self.respond = {tag: responder(m.signature, tag) for tag, m in runner.models.items()}
        self.shadow = Shadow()
        self._counters: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

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

    def named(
        self, name: str, version: str | None, headers: Any = None, client: str | None = None
    ) -> tuple[LoadedModel, Route]:
        """The model the Open Inference Protocol calls `name` (and `version`), and how it was
        chosen, or a 404 ServingError. Without a version and with a request's `headers`, the
        routing picks (default, or canary by X-Request-Key) among that name's versions."""
        if version is None and headers is not None:
            model, route = self.choose({**headers, VERSION_HEADER: ""}, client)
            if model.tag.split(":")[0] == name:
                return model, route
        for model in self.runner.models.values():
            tag_name, tag_version = model.tag.split(":")
            if tag_name == name and version in (None, tag_version):
                return model, Route(model.tag, "explicit" if version else "default")
        raise ServingError(
            f"model {name!r}{f' version {version!r}' if version else ''} is not served; "
            f"served: {sorted(self.runner.models)}",
            404,
            "version",
        )

    def default(self) -> tuple[LoadedModel, Route]:
        route = Route(self.router.default, "default")
        return self.runner.models[route.tag], route

    def count(self, route: Route, endpoint: str, rows: int, protocol: str = "http") -> None:
        # The labelled counters are looked up once per (version, endpoint, route, protocol)
        # and kept: prometheus_client's labels() checks and joins its arguments on every call.
        key = (route.tag, endpoint, route.how, protocol)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = (
                metrics.PREDICTIONS.labels(
                    version=route.tag, endpoint=endpoint, route=route.how, protocol=protocol
                ),
                metrics.ROWS.labels(version=route.tag, endpoint=endpoint, protocol=protocol),
            )
        counters[0].inc()
        counters[1].inc(rows)

    def copy_to_shadow(self, route: Route, feeds: Feeds, outputs: dict[str, np.ndarray]) -> None:
        """A copy of what the default answered, for the shadow version, if there is one."""
        shadow = self.router.shadow
        if shadow and route.how == "default":
            self.shadow.submit(self.runner.models[shadow], feeds, outputs)

    def answered(
        self,
        route: Route,
        endpoint: str,
        feeds: Feeds,
        outputs: dict[str, np.ndarray],
        protocol: str = "http",
    ) -> None:
        """Count the answer, and hand the shadow its copy."""
        self.count(route, endpoint, feeds.rows, protocol)
        self.copy_to_shadow(route, feeds, outputs)
