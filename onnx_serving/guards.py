"""ASGI middleware at the edge, before a request reaches a protocol codec, each reading the
route table (contract.py): the error contract (every error answer in one format, counted and
logged in one place), API keys (401), media types (415), body bytes and JSON values (413),
JSON for the router's own 404/405, and adaptive batching's 503. Probes and /metrics stay
open. Overload is shed earlier, in the HTTP protocol (onnx_serving/admission.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
from typing import Any

from . import errors
from .config import Settings
from .contract import route_of

logger = logging.getLogger("bentoml.onnx_serving.errors")


class Outcome:
    """What the code answering one request says about its error, for ErrorContract."""

    __slots__ = ("reason", "request_id")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.request_id: str | None = None


OUTCOME: contextvars.ContextVar[Outcome | None] = contextvars.ContextVar("outcome", default=None)


def note_reason(reason: str) -> None:
    """Tell ErrorContract why the request at hand is being refused (a REASONS label)."""
    outcome = OUTCOME.get()
    if outcome is not None:
        outcome.reason = reason


async def reply(
    send: Any, status: int, message: str, reason: str, headers: dict[str, str] | None = None
) -> None:
    """Send a whole JSON error response (ErrorContract counts and logs it)."""
    note_reason(reason)
    body = errors.body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_response(exc: errors.ServingError, headers: dict[str, str] | None = None) -> Any:
    """A ServingError as the app's JSON response (ErrorContract counts and logs it)."""
    from starlette.responses import JSONResponse

    note_reason(exc.reason)
    return JSONResponse({"error": str(exc)}, exc.status, headers=headers)


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# --- the error contract ----------------------------------------------------------------------

_BY_STATUS = {401: "unauthorized", 405: "method", 408: "timeout", 415: "media_type"}
MAX_ERROR_BODY = 1 << 20  # an error body larger than this is not rewritten


def reason_for(status: int, message: str) -> str:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status == 404:
        return "version" if "not served" in message else "not_found"
    if status == 413:
        return "body_too_large" if "_BYTES)" in message else "size"
    return errors.reason_of(message)


def _normalized(raw: bytes, status: int, rid: str | None) -> tuple[dict[str, Any], str]:
    """Any error body as `{"error": message, ...}`: BentoML's validation errors with their
    first problem as the message, its 4xx list unwrapped, plain text wrapped."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = {"error": raw.decode("utf-8", "replace").strip() or f"HTTP {status}"}
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML sends its own 4xx errors as a one-element list
    if isinstance(data, dict) and "error" not in data and (status < 500 or status == 503):
        return data, f"HTTP {status}"  # an answer of its own (V2's {"ready": false}): kept
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        data = {"error": f"HTTP {status}"}
    detail = data.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        # pydantic names each member of a union it tried ("list[float]"): not the caller's.
        where = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p))
        what = str(first.get("msg", "")).removeprefix("Value error, ")
        data["error"] = f"{where}: {what}" if where else what
        data["detail"] = [{k: d.get(k) for k in ("type", "loc", "msg")} for d in detail[:10]]
    if status >= 500 and status != 503:
        data = errors.internal_error(rid or errors.request_id())
    return data, data["error"]


class ErrorContract:
    """Every error answer the app gives passes here: its body made `{"error": "..."}` (the
    native API's format and V2's), each 4xx counted by its reason and logged as one WARNING
    line (route, status, reason, request id) without the values sent, and any exception that
    escaped the app answered 500 with a request id and logged once, with its traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        outcome = Outcome()
        token = OUTCOME.set(outcome)
        held: dict | None = None  # an error response's start, held until the app is done
        chunks: list[bytes] = []
        size, sent = 0, False

        async def watch(message: dict) -> None:
            nonlocal held, size, sent
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held = message
                    return
                sent = True
                return await send(message)
            if held is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ERROR_BODY:  # not ours to rewrite: pass it on as it is
                start, held = held, None
                sent = True
                body = b"".join(chunks)
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": True})

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # the one place an unexpected error is answered
            outcome.request_id = errors.internal(exc, self._where(scope), self._headers(scope))
            if not sent:  # else too late to answer: the response was under way
                start = {"type": "http.response.start", "status": 500, "headers": []}
                await self._answer(scope, start, b"", outcome, send)
        else:
            if held is not None:
                await self._answer(scope, held, b"".join(chunks), outcome, send)
        finally:
            OUTCOME.reset(token)

    @staticmethod
    def _where(scope: dict) -> str:
        return f"{scope.get('method', '')} {scope.get('path', '')}"

    @staticmethod
    def _headers(scope: dict) -> dict[str, str]:
        rid = header(scope, b"x-request-id")
        return {"x-request-id": rid} if rid else {}

    async def _answer(
        self, scope: dict, start: dict, raw: bytes, outcome: Outcome, send: Any
    ) -> None:
        status = start["status"]
        data, message = _normalized(raw, status, outcome.request_id)
        where = self._where(scope)
        if status < 500:
            reason = outcome.reason or reason_for(status, message)
            errors.refused(status, reason, message, where, errors.request_id(self._headers(scope)))
        body = json.dumps(data).encode()
        headers = [
            (k, v)
            for k, v in start.get("headers", ())
            if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class QuietValidationLog(logging.Filter):
    """BentoML logs every error of its API routes at ERROR with a traceback (its
    `log_exception`, bentoml/_internal/server/http_app.py), 400s included, and a pydantic
    traceback holds the values the caller sent. The 4xx are ErrorContract's to log (one
    WARNING line); a real failure keeps its ERROR line and traceback, with the request id
    that its 500 answer gives the caller."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError

        if isinstance(exc, (ValidationError, errors.ServingError)):
            return False
        code = getattr(getattr(exc, "error_code", None), "value", 500)
        if isinstance(code, int) and code < 500:
            return False
        outcome = OUTCOME.get()
        rid = errors.request_id()
        if outcome is not None:
            outcome.request_id = rid
        record.msg = f"{record.msg} -> 500 (request %s)"
        record.args = (*(record.args or ()), rid)
        return True


class EscapedAccessLog(logging.Filter):
    """The access log's fields, control characters escaped: a `%0d%0a` in a path can't forge
    a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                errors.safe(a, 2000) if isinstance(a, str) else a for a in record.args
            )
        return True


def install_log_filters() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietValidationLog())
    logging.getLogger("bentoml.access").addFilter(EscapedAccessLog())


# --- guards -----------------------------------------------------------------------------------


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


class BodyTooLarge(Exception):
    """Raised into the app when a body passes its limit as it streams in."""


class BodyBudget:
    """413 for a body past its route's limits, before the app has it all: at once from
    Content-Length, without reading it; as soon as a body sent without one (chunked) passes
    its byte limit; and, for JSON, as soon as the values, arrays and members counted in it
    pass what MAX_VALUES allows (contract.json_budget), so a body can't make the parser build
    more objects than a request of MAX_VALUES values needs. V2's binary tensors after their
    JSON header are counted in bytes only."""

    def __init__(self, app: Any, settings: Settings) -> None:
        from .contract import body_limit, json_budget

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
        too_large = (
            f"the body is larger than {errors.safe(path)} takes: at most {limit:,} bytes "
            f"({setting})"
        )
        if length is not None and length.isdigit() and int(length) > limit:
            return await reply(send, 413, too_large, "body_too_large")
        if not counted and length is not None and length.isdigit():
            # The HTTP server reads no more than Content-Length says: nothing to count.
            return await self.app(scope, receive, send)
        json_bytes = 1 << 62
        if counted and (head := header(scope, b"inference-header-content-length")):
            json_bytes = int(head) if head.isdigit() else 0  # V2: its JSON header only
        seen, nodes, started = 0, 0, False
        over: tuple[str, str] | None = None  # (message, reason) once a limit is passed
        budget = self.budget

        async def counting() -> dict:
            nonlocal seen, nodes, over
            msg = await receive()
            chunk = msg.get("body", b"")
            if counted and seen < json_bytes:
                part = chunk[: json_bytes - seen] if json_bytes - seen < len(chunk) else chunk
                nodes += part.count(b",") + part.count(b"[") + part.count(b"{")
                if nodes > budget:
                    over = (
                        f"the JSON body holds more than {budget:,} values, arrays and members: "
                        f"at most MAX_VALUES={self.settings.max_values:,} values are taken",
                        "size",
                    )
                    raise BodyTooLarge(over[0])
            seen += len(chunk)
            if seen > limit:
                over = (too_large, "body_too_large")
                raise BodyTooLarge(too_large)
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
                return await reply(send, 503, f"{why}; retry later", "size", self.retry)
            await send(message)

        await self.app(scope, receive, rewrite)
