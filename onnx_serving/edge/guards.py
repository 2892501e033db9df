"""ASGI middleware at the edge, before a request reaches a protocol codec, each reading the
route table (route_table.py): API keys (401), media types (415), body bytes and JSON values
(413), JSON for the router's own 404/405, and adaptive batching's 503. Probes and /metrics
stay open. Every answer they give is an error of the one contract (error_contract.py).
Overload is shed earlier, in the HTTP protocol (onnx_serving/edge/admission.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from typing import Any

from onnx_serving import errors
from onnx_serving.config import Settings
from onnx_serving.edge.error_contract import reply
from onnx_serving.edge.route_table import JSON_MEMBERS, header, route_of


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
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rule = route_of(scope.get("path", ""))
        if (rule is not None and not rule.auth) or self.accepts(scope):
            return await self.app(scope, receive, send)
        await reply(
            send,
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            "unauthorized",
            {"WWW-Authenticate": "Bearer"},
        )


class ContentTypeGuard:
    """415 when a POST's Content-Type doesn't fit its route; 400 for multipart without the
    boundary that separates its parts (the form parser would fail on it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            rule = route_of(scope["path"])
            if rule is not None and rule.media_types:
                full = header(scope, b"content-type") or ""
                got = full.split(";")[0].strip().lower()
                if got not in rule.media_types:
                    wanted = " or ".join(rule.media_types)
                    message = f"Content-Type must be {wanted}, got {errors.safe(got, 80) or 'none'}"
                    return await reply(send, 415, message, "media_type")
                if got == "multipart/form-data" and "boundary=" not in full.lower():
                    message = "Content-Type multipart/form-data needs its boundary parameter"
                    return await reply(send, 400, message, "media_type")
        await self.app(scope, receive, send)


# A JSON name's end: its closing quote and the colon after it (a colon inside a string follows
# no quote, unless an escaped one).
NAME = re.compile(rb'"[ \t\r\n]*:')


class BodyTooLarge(Exception):
    """Raised into the app when a body passes its limit as it streams in."""


class BodyBudget:
    """413 for a body past its route's limits, before the app has it all: at once from
    Content-Length, without reading it; as soon as a body sent without one (chunked) passes
    its byte limit; and, for JSON, as soon as the values, arrays and members counted in it
    pass what MAX_VALUES allows (route_table.json_budget), or its names pass
    route_table.JSON_MEMBERS, so a body can't make the parser build more objects (or pydantic
    more errors) than a request of MAX_VALUES values needs. V2's binary tensors after their
    JSON header are counted in bytes only."""

    def __init__(self, app: Any, settings: Settings) -> None:
        from onnx_serving.edge.route_table import body_limit, json_budget

        self.app, self.settings = app, settings
        self.limit_of = lambda rule: body_limit(rule, settings)
        self.budget = json_budget(settings)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        rule = route_of(path)
        limit, setting = self.limit_of(rule)
        length = header(scope, b"content-length")
        counted = rule is not None and rule.json_values

        def too_large() -> str:  # built only for a refusal, not for every request
            return (
                f"the body is larger than {errors.safe(path)} takes: at most {limit:,} bytes "
                f"({setting})"
            )

        if length is not None and length.isdigit():
            size = int(length)
            if size > limit:
                return await reply(send, 413, too_large(), "body_too_large")
            # The HTTP server reads no more than Content-Length says, and a body of `size`
            # bytes holds at most `size` values, arrays and members, and size / 3 names
            # (`"":`): within both budgets there is nothing to count.
            if not counted or size <= min(self.budget, 3 * JSON_MEMBERS):
                return await self.app(scope, receive, send)
        json_bytes = 1 << 62
        if counted and (head := header(scope, b"inference-header-content-length")):
            json_bytes = int(head) if head.isdigit() else 0  # V2: its JSON header only
        seen, nodes, members, started, carry = 0, 0, 0, False, b""
        over: tuple[str, str] | None = None  # (message, reason) once a limit is passed
        budget = self.budget

        async def counting() -> dict:
            nonlocal seen, nodes, members, carry, over
            msg = await receive()
            chunk = msg.get("body", b"")
            if counted and seen < json_bytes:
                part = chunk[: json_bytes - seen] if json_bytes - seen < len(chunk) else chunk
                nodes += part.count(b",") + part.count(b"[") + part.count(b"{")
                # A name's quote may end one chunk and its colon begin the next: the quote is
                # carried over (whitespace between them changes nothing).
                scan = carry + part
                members += len(NAME.findall(scan))  # about 0.3 ms a MB
                carry = b'"' if scan.rstrip(b" \t\r\n").endswith(b'"') else b""
                if members > JSON_MEMBERS:
                    over = (
                        f"the JSON body names more than {JSON_MEMBERS:,} fields: a request "
                        "names its inputs and the protocol's fields, not more",
                        "size",
                    )
                    raise BodyTooLarge(over[0])
                if nodes > budget:
                    over = (
                        f"the JSON body holds more than {budget:,} values, arrays and members: "
                        f"at most MAX_VALUES={self.settings.max_values:,} values are taken",
                        "size",
                    )
                    raise BodyTooLarge(over[0])
            seen += len(chunk)
            if seen > limit:
                over = (too_large(), "body_too_large")
                raise BodyTooLarge(over[0])
            return msg

        async def watched(msg: dict) -> None:
            nonlocal started
            if over:
                return  # whatever the app makes of the exception, the answer is 413
            started = True
            await send(msg)

        # The app may let the exception out, or turn it into an error of its own.
        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting, watched)
        if over and not started:
            await reply(send, 413, *over)


class JsonNotFound:
    """Paths (or methods) no route takes get Starlette's plain-text 404/405 from BentoML's
    router; send them as JSON, like every other error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # A POST to a prediction route always finds its route: nothing to rewrite there.
        if scope["type"] != "http" or (
            scope["method"] == "POST" and route_of(scope["path"]) is not None
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
                where = errors.safe(f"{scope['method']} {scope['path']}")
                what = "no route for" if status == 404 else "method not allowed:"
                reason = "not_found" if status == 404 else "method"
                return await reply(
                    send, status, f"{what} {where}; the API is at /docs.json", reason
                )
            await send(message)

        await self.app(scope, receive, rewrite)


class BatchingRefusal:
    """Adaptive batching's own 503 (a request that would miss BATCH_MAX_LATENCY_MS) comes
    with BentoML's generic body: give it the JSON reason and `Retry-After` of every other
    overload refusal (onnx_serving/edge/admission.py). Only /predict_batched can answer it."""

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
                return await reply(send, 503, f"{why}; retry later", "size", self.retry)
            await send(message)

        await self.app(scope, receive, rewrite)
