"""What each route takes, in one table: methods, media types, body limit, value budget, auth,
and the label its errors and metrics carry. The guards (guards.py), the API document
(openapi.py) and the error handling (error_contract.py) read it; no
route's rules are written anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx_serving.config import Settings

JSON, BINARY, MULTIPART = "application/json", "application/octet-stream", "multipart/form-data"


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    media_types: tuple[str, ...] = ()  # what a POST may send; () = not checked
    limit: str | None = None  # the setting that bounds its body, in bytes
    json_values: bool = False  # its JSON is counted against MAX_VALUES before it is parsed
    auth: bool = True  # needs an API key when keys are configured

    @property
    def label(self) -> str:
        return self.path


PREDICT = ("POST",)
GET = ("GET", "HEAD")
# V2 infer takes JSON, or a JSON header plus binary tensors (the larger limit, the JSON part
# counted); its paths carry the model's name and version.
V2_INFER = Route("/v2/models/{name}/infer", PREDICT, (), "MAX_V2_BYTES", json_values=True)

ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route("/predict", PREDICT, (JSON,), "MAX_JSON_BYTES", json_values=True),
        Route("/predict_batched", PREDICT, (JSON,), "MAX_JSON_BYTES", json_values=True),
        Route("/predict_binary", PREDICT, (BINARY,), "MAX_BINARY_BYTES"),
        Route("/predict_file", PREDICT, (MULTIPART,), "MAX_FILE_BYTES"),
        Route("/predict_image", PREDICT, (MULTIPART,), "MAX_IMAGE_BYTES"),
        Route("/metadata", GET),
        Route("/v2", GET),
        # Open to everyone, whatever else is configured: orchestrators and scrapers call them.
        *(Route(p, GET, auth=False) for p in ("/livez", "/readyz", "/healthz", "/metrics")),
        *(Route(p, GET, auth=False) for p in ("/v2/health/live", "/v2/health/ready")),
        # ...and the API document, so the Swagger UI loads (it can't call anything without a key).
        *(Route(p, GET, auth=False) for p in ("/", "/docs", "/docs.json")),
    )
}
V2_MODEL = Route("/v2/models/{name}", GET)


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def route_of(path: str) -> Route | None:
    """The rule for a request's path (a trailing slash ignored), or None: no such route."""
    rule = ROUTES.get(path) or ROUTES.get(path.rstrip("/"))
    if rule is None and path.startswith("/v2/models/"):
        return V2_INFER if path.endswith("/infer") else V2_MODEL
    return rule


def body_limit(rule: Route | None, settings: Settings) -> tuple[int, str]:
    """The most bytes a POST to `rule` may send, and the setting that says so."""
    name = rule.limit if rule is not None and rule.limit else "MAX_V2_BYTES"
    limits = {
        "MAX_JSON_BYTES": settings.json_limit,
        "MAX_BINARY_BYTES": settings.binary_limit,
        "MAX_V2_BYTES": max(settings.json_limit, settings.binary_limit),
        "MAX_FILE_BYTES": settings.max_file_bytes,
        "MAX_IMAGE_BYTES": settings.max_image_bytes,
    }
    limit = limits[name]
    # V2 takes the larger of the JSON and binary limits: name the one that applies.
    if name == "MAX_V2_BYTES":
        name = "MAX_JSON_BYTES" if limit == settings.json_limit else "MAX_BINARY_BYTES"
    return limit, name


# Names in a JSON body (`"name":`, counted as the body arrives, wherever a quote is followed
# by a colon): a request names its inputs, V2's fields and parameters, a few dozen; each
# name past what the model takes costs pydantic an error of some 270 bytes, so a million of
# them, inside the value budget, held 1.4 GB.
JSON_MEMBERS = 65_536


def json_budget(settings: Settings) -> int:
    """How many JSON values, arrays and members (counted as `,` `[` `{`) a body may hold.

    Every JSON value but a container's first needs a comma, and every container a bracket, so
    their count bounds the objects the parser would make before it makes them. A request of
    MAX_VALUES values needs at most twice as many (rows of one value: `[1],`); the rest is
    room for names, parameters and nesting.
    """
    return 2 * settings.max_values + 64 * 1024


def client_key(request: Any) -> str:
    """The client's address: the canary's key when no X-Request-Key is sent ("" on a Unix
    socket, which has none)."""
    return request.client.host if request.client else ""
