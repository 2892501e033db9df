"""ASGI middleware that guards the service before a request reaches it: API keys (401), the
media type each route takes (415), body sizes (413), JSON for the router's own 404/405, and
adaptive batching's 503. Each answers with a JSON `{"error": ...}` that names the rule and its
setting; probes and /metrics stay open. Overload is shed earlier, in the HTTP protocol
(onnx_serving/admission.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from typing import Any

from . import metrics
from .config import Settings

# Open to everyone, whatever else is configured: orchestrators and scrapers call them.
OPEN_PATHS = frozenset(
    {"/livez", "/readyz", "/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
# ...and the API document, so the Swagger UI loads (it can't call anything without a key).
DOC_PATHS = frozenset({"/", "/docs.json"})

# Which media type each route accepts. BentoML would otherwise parse any body as JSON.
ROUTE_MEDIA_TYPES = {
    "/predict": "application/json",
    "/predict_batched": "application/json",
    "/predict_file": "multipart/form-data",
    "/predict_image": "multipart/form-data",
    "/predict_binary": "application/octet-stream",
}


# The input rejections these guards answer, by status, for onnx_input_rejections_total.
REASONS = {401: "unauthorized", 413: "body_too_large", 415: "media_type", 400: "media_type"}


async def reply(
    send: Any, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """Send a whole JSON error response (and count an input rejection)."""
    if status in REASONS:
        metrics.REJECTIONS.labels(reason=REASONS[status]).inc()
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class ApiKeyGuard:
    """401 unless the request carries an accepted key: `Authorization: Bearer KEY` or
    `X-API-Key: KEY`. Keys are compared as SHA-256 digests in constant time and never logged."""

    def __init__(self, app: Any, hashes: tuple[str, ...]) -> None:
        self.app, self.hashes = app, [bytes.fromhex(h) for h in hashes]

    def accepts(self, scope: dict) -> bool:
        given = header(scope, b"x-api-key")
        auth = header(scope, b"authorization")
        if given is None and auth and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given:
            return False
        digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        # Compare with every key, so the time taken says nothing about which one is close.
        return sum(hmac.compare_digest(digest, h) for h in self.hashes) > 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in OPEN_PATHS
            or path in DOC_PATHS
            or self.accepts(scope)
        ):
            return await self.app(scope, receive, send)
        await reply(
            send,
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            {"WWW-Authenticate": "Bearer"},
        )


class ContentTypeGuard:
    """415 when a POST's Content-Type doesn't fit its route; 400 for multipart without the
    boundary that separates its parts (the form parser would fail on it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            wanted = ROUTE_MEDIA_TYPES.get(scope["path"].rstrip("/") or "/")
            if wanted is not None:
                full = header(scope, b"content-type") or ""
                got = full.split(";")[0].strip().lower()
                if got != wanted:
                    message = f"Content-Type must be {wanted}, got {got or 'none'}"
                    return await reply(send, 415, message)
                if got == "multipart/form-data" and "boundary=" not in full.lower():
                    message = "Content-Type multipart/form-data needs its boundary parameter"
                    return await reply(send, 400, message)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised into the app when a body without Content-Length streams past its limit."""


class BodyLimit:
    """413 for a body past its route's limit: at once from Content-Length, without reading
    it; or, for a body sent without one (chunked), as soon as the count passes the limit,
    so memory and disk never hold more than the limit."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        json_limit = (settings.json_limit, "MAX_JSON_BYTES")
        self.limits = {
            "/predict": json_limit,
            "/predict_batched": json_limit,
            "/predict_binary": (settings.binary_limit, "MAX_BINARY_BYTES"),
            "/predict_file": (settings.max_file_bytes, "MAX_FILE_BYTES"),
            "/predict_image": (settings.max_image_bytes, "MAX_IMAGE_BYTES"),
        }
        # V2 infer takes JSON or a JSON header plus binary tensors: the larger limit.
        self.default = max(json_limit, (settings.binary_limit, "MAX_BINARY_BYTES"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit, setting = self.limits.get(path.rstrip("/"), self.default)
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) <= limit:
            # The HTTP server reads no more than Content-Length says: nothing to count.
            return await self.app(scope, receive, send)
        message = f"the body is larger than {path} takes: at most {limit:,} bytes ({setting})"
        if length is not None and length.isdigit():
            return await reply(send, 413, message)
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                over = True
                raise BodyTooLarge(message)
            return msg

        async def watched(msg: dict) -> None:
            nonlocal started
            if over:
                return  # whatever the app makes of the exception, the answer is 413
            started = True
            await send(msg)

        # The app may let the exception out, or turn it into an error of its own.
        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counted, watched)
        if over and not started:
            await reply(send, 413, message)


class JsonNotFound:
    """Paths (or methods) no route takes get Starlette's plain-text 404/405 from BentoML's
    router; send them as JSON, like every other error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # A POST to a prediction route always finds its route: nothing to rewrite there.
        if scope["type"] != "http" or (
            scope["method"] == "POST" and scope["path"] in ROUTE_MEDIA_TYPES
        ):
            return await self.app(scope, receive, send)
        status = 0

        async def rewrite(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                plain = (b"content-type", b"text/plain; charset=utf-8") in message["headers"]
                if message["status"] in (404, 405) and plain:
                    status = message["status"]
                    return
            elif status:
                where = f"{scope['method']} {scope['path']}"
                what = "no route for" if status == 404 else "method not allowed:"
                return await reply(send, status, f"{what} {where}; the API is at /docs.json")
            await send(message)

        await self.app(scope, receive, rewrite)


class BatchingRefusal:
    """Adaptive batching's own 503 (a request that would miss BATCH_MAX_LATENCY_MS) comes
    with BentoML's generic body: give it the JSON reason and `Retry-After` of every other
    overload refusal (onnx_serving/admission.py). Only /predict_batched can answer it."""

    def __init__(self, app: Any, retry_after_s: int) -> None:
        self.app = app
        self.retry = {"Retry-After": str(retry_after_s)}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict_batched":
            return await self.app(scope, receive, send)
        rewriting = False

        async def rewrite(message: dict) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 503:
                rewriting = True
                return
            if rewriting:
                why = "overloaded: adaptive batching can't answer within BATCH_MAX_LATENCY_MS"
                return await reply(send, 503, f"{why}; retry later", self.retry)
            await send(message)

        await self.app(scope, receive, rewrite)
