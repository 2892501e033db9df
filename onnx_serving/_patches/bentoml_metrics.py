"""BentoML 1.4.39's request metrics labelled by route instead of by the raw path, and their
labelled children looked up once per route, applied by install().

BentoML's RunnerTrafficMetricsMiddleware (bentoml/_internal/server/http/instruments.py)
labels `bentoml_service_request_total`, `_request_duration_seconds` and
`_request_in_progress` with `endpoint=scope["path"]`: whatever path a client sends. Every
distinct path, 404s included (`/v2/models/<any name>/infer`, a scanner's `/.env`, ...),
became a new time series in every worker's metric files and on /metrics, for as long as
the worker lives: memory, disk and scrape size that a client could grow without bound. It
also looks up each labelled child with keyword arguments on every request (`labels()`
sorts, joins and locks): about 10 µs of a one-row request's CPU.

Here `endpoint` is the route the edge's route table gives the path (route_table.route_of:
`/predict`, `/v2/models/{name}/infer`), or `unmatched` for a path no route serves: the
label set is bounded by the routes. The children are looked up once per route and status.
Everything else is BentoML's: metric names, labels, buckets, the in-progress gauge, the
last-request timestamp (not for its skip paths). Websockets (which this service doesn't
serve) go through BentoML's own code.

BentoML's app imports the class from that module when it builds its middleware
(_bentoml_impl/server/app.py), so replacing the module's attribute is enough.
"""

from __future__ import annotations

from timeit import default_timer
from typing import Any

from bentoml._internal.context import server_context
from bentoml._internal.server.http import instruments

from onnx_serving._patches import Patch, Target
from onnx_serving.edge.route_table import route_of

UNMATCHED = "unmatched"  # the endpoint label of a path no route serves


class RouteMetrics:
    """One route's labelled children: in progress, the last request's time, and per status
    the count and duration."""

    __slots__ = ("by_status", "in_progress", "labels", "last_request", "middleware")

    def __init__(self, middleware: Any, endpoint: str) -> None:
        self.middleware = middleware
        service = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        self.labels = {"endpoint": endpoint, **service}
        self.in_progress = middleware.metrics_request_in_progress.labels(**self.labels)
        self.last_request = (
            None
            if endpoint.startswith(tuple(middleware.skip_paths))
            else middleware.metrics_last_request_timestamp.labels(**service)
        )
        self.by_status: dict[int, tuple[Any, Any]] = {}

    def answered(self, status: int, seconds: float) -> None:
        children = self.by_status.get(status)
        if children is None:
            labels = {**self.labels, "http_response_code": status}
            children = self.by_status[status] = (
                self.middleware.metrics_request_total.labels(**labels),
                self.middleware.metrics_request_duration.labels(**labels),
            )
        children[0].inc()
        children[1].observe(seconds)


class RunnerTrafficMetricsMiddleware(instruments.RunnerTrafficMetricsMiddleware):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, RouteMetrics] = {}  # at most one per route, and `unmatched`

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            return await super().__call__(scope, receive, send)
        if not self._is_setup:
            self._setup()
        rule = route_of(scope["path"])
        endpoint = rule.path if rule is not None else UNMATCHED
        route = self.routes.get(endpoint)
        if route is None:
            route = self.routes[endpoint] = RouteMetrics(self, endpoint)
        if route.last_request is not None:
            route.last_request.set_to_current_time()
        started = default_timer()
        status = 0

        async def observed_send(message: Any) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body"):
                route.answered(status, max(default_timer() - started, 0))
            await send(message)

        route.in_progress.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            route.in_progress.dec()


def apply() -> None:
    instruments.RunnerTrafficMetricsMiddleware = RunnerTrafficMetricsMiddleware  # type: ignore[misc]


PATCH = Patch(
    name="bentoml-route-metrics",
    why="request metrics labelled by route (unmatched for unknown paths), not by the raw path a "
    "client sends; labelled children looked up once",
    upstream="to file at bentoml/BentoML: 'RunnerTrafficMetricsMiddleware labels request "
    'metrics with the raw scope["path"]: every distinct path, 404s included, is a new time '
    "series (unbounded label cardinality); reproduce with curl to /random-1, /random-2 and "
    "/metrics; fix: label with the matched route template, a fixed value for unmatched paths'",
    versions={"bentoml": "1.4.39"},
    targets=(
        Target(
            "bentoml._internal.server.http.instruments",
            "RunnerTrafficMetricsMiddleware",
            uses=(
                'endpoint = scope["path"]',
                "self.metrics_request_total",
                "self.metrics_request_duration",
                "self.metrics_request_in_progress",
                "self.metrics_last_request_timestamp",
                "self.skip_paths",
                "self._setup()",
            ),
        ),
        Target(
            "_bentoml_impl.server.app",
            uses=("from bentoml._internal.server.http.instruments import (",),
        ),
    ),
    apply=apply,
    in_effect=lambda: instruments.RunnerTrafficMetricsMiddleware is RunnerTrafficMetricsMiddleware,
)
