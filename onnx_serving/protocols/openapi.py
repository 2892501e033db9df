"""What BentoML's generated API document (/docs.json) leaves out, added as it is served.

BentoML documents 400, 404 and 500 on its own API routes, and its 400's `detail` as a
string (it sends a list); it can't know the guards in front of the service. This adds
every error response a route can give, all `{"error": ...}`, so a client, a fuzzer
(schemathesis, in the tests) or a gateway can rely on the document.
"""

from __future__ import annotations

import json
from typing import Any

from onnx_serving.edge.route_table import route_of

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, and the setting involved"},
        "detail": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Validation errors: where (`loc`) and what (`msg`)",
        },
    },
}
DESCRIPTIONS = {
    "400": "Bad input; the message says what was wrong",
    "401": "Missing or wrong API key (when API keys are configured)",
    "404": "No such model or version",
    "413": "The body is larger than the route takes",
    "415": "The Content-Type doesn't fit the route",
    "500": "A fault of the server: the body's request_id names its log line",
}


def errors_of(path: str, method: str) -> list[str]:
    rule = route_of(path)
    codes = [] if rule is not None and not rule.auth else ["401"]
    if method == "post":
        codes += ["400", "413"]
        if rule is not None and rule.media_types:
            codes.append("415")
    if path.startswith("/v2/models/"):
        codes += ["400", "404"]
    return codes


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    if "InvalidArgument" in schemas:  # BentoML's own 400: `detail` is a list, not a string
        schemas["InvalidArgument"]["properties"]["detail"] = ERROR["properties"]["detail"]
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for code in errors_of(path, method):
                responses.setdefault(
                    code,
                    {
                        "description": DESCRIPTIONS[code],
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
            # FastAPI documents 422 for its validation errors; http_routes.py answers them 400.
            responses.pop("422", None)
    return spec


class CompleteDocs:
    """ASGI middleware: GET /docs.json passes through `complete` on its way out."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            return await self.app(scope, receive, send)
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(complete(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
