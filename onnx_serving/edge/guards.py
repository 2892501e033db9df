"""The edge's checks, before a request reaches a protocol codec: one ASGI layer (`Guards`)
that reads the request's rule from the route table (route_table.py) once and decides from
it: API keys (401), media types (415), body bytes and JSON values (413), JSON for the
router's own 404/405, and adaptive batching's 503. Probes and /metrics stay open. Every
answer it gives is an error of the one contract (error_contract.py). Overload is shed
earlier, in the HTTP protocol (onnx_serving/edge/admission.py).
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
from onnx_serving.edge.route_table import (
    JSON_MEMBERS,
    ROUTES,
    V2_INFER,
    V2_MODEL,
    Route,
    header,
    route_of,
)


class Guards:
    """The edge's checks as one ASGI layer, each decided from the request's route (its
    rule in route_table.py, looked up once): who may call (401), what it may send (415,
    400), how much (BodyBudget's 413), the router's own 404/405 as JSON, and adaptive
    batching's 503 with its reason. Probes and /metrics stay open."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.keys = accepted_keys(settings)
        self.budget = BodyBudget(settings)
        self.retry = {"Retry-After": str(settings.retry_after_s)}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        rule = route_of(path)
        if self.keys and (rule is None or rule.auth) and not accepts(scope, self.keys):
            return await reply(
                send, 401, UNAUTHORIZED, "unauthorized", {"WWW-Authenticate": "Bearer"}
            )
        if method == "POST" and rule is not None:
            # A POST to a prediction route always finds its route: no 404 to rewrite.
            if rule.media_types and (refusal := media_type_refusal(scope, rule.media_types)):
                return await reply(send, *refusal)
            if path == "/predict_batched":
                send = batching_refusal(send, self.retry)
        else:
            send = json_not_found(scope, send)
        if method in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        await self.budget(self.app, scope, receive, send, rule)


def accepted_keys(settings: Settings) -> list[bytes]:
    """The SHA-256 digests of the accepted API keys (HTTP and gRPC); empty: no keys asked."""
    return [bytes.fromhex(h) for h in settings.api_key_hashes]


def accepts(scope: dict, keys: list[bytes]) -> bool:
    """Whether the request carries an accepted key (key_accepted)."""
    return key_accepted(header(scope, b"x-api-key"), header(scope, b"authorization"), keys)


def key_accepted(api_key: str | None, authorization: str | None, keys: list[bytes]) -> bool:
    """Whether `X-API-Key: KEY` or `Authorization: Bearer KEY` (HTTP headers, or gRPC call
    metadata) carries an accepted key. Keys are compared as SHA-256 digests in constant
    time, and never logged."""
    given = api_key
    if given is None and authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if not given:
        return False
    digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
    # Compare with every key, so the time taken says nothing about which one is close.
    return sum(hmac.compare_digest(digest, h) for h in keys) > 0


UNAUTHORIZED = "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"


def media_type_refusal(scope: dict, wanted: tuple[str, ...]) -> tuple[int, str, str] | None:
    """415 when a POST's Content-Type doesn't fit its route; 400 for multipart without the
    boundary that separates its parts (the form parser would fail on it)."""
    full = header(scope, b"content-type") or ""
    got = full.split(";")[0].strip().lower()
    if got not in wanted:
        message = (
            f"Content-Type must be {' or '.join(wanted)}, got {errors.safe(got, 80) or 'none'}"
        )
        return 415, message, "media_type"
    if got == "multipart/form-data" and "boundary=" not in full.lower():
        return 400, "Content-Type multipart/form-data needs its boundary parameter", "media_type"
    return None


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

    def __init__(self, settings: Settings) -> None:
        from onnx_serving.edge.route_table import body_limit, json_budget

        self.settings = settings
        self.budget = json_budget(settings)
        # Each route's limit and its setting, worked out once (None: no rule, V2's limit).
        self.limits = {
            rule: body_limit(rule, settings)
            for rule in (*ROUTES.values(), V2_INFER, V2_MODEL, None)
        }

    async def __call__(
        self, app: Any, scope: dict, receive: Any, send: Any, rule: Route | None
    ) -> None:
        """`app` called with `receive` counting what the body holds against `rule`'s limits."""
        path = scope["path"]
        limit, setting = self.limits[rule]
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
                return await app(scope, receive, send)
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
            await app(scope, counting, watched)
        if over and not started:
            await reply(send, 413, *over)


def json_not_found(scope: dict, send: Any) -> Any:
    """`send`, with the router's plain-text 404/405 (a path or method no route takes) sent
    as JSON, like every other error."""
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
            return await reply(send, status, f"{what} {where}; the API is at /docs.json", reason)
        await send(message)

    return rewrite


def batching_refusal(send: Any, retry: dict[str, str]) -> Any:
    """`send`, with adaptive batching's own 503 (a request that would miss
    BATCH_MAX_LATENCY_MS, sent with BentoML's generic body) given the JSON reason and
    `Retry-After` of every other overload refusal (onnx_serving/edge/admission.py)."""
    rewriting = False

    async def rewrite(message: dict) -> None:
        nonlocal rewriting
        if message["type"] == "http.response.start" and message["status"] == 503:
            rewriting = True
            return
        if rewriting:
            why = "overloaded: adaptive batching can't answer within BATCH_MAX_LATENCY_MS"
            return await reply(send, 503, f"{why}; retry later", "size", retry)
        await send(message)

    return rewrite
