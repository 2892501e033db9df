"""The error contract: every error answer the app gives leaves in one format,
`{"error": "..."}` (the native API's and V2's), counted by its reason and logged as one line
in one place (`ErrorContract`, the outermost of the service's middleware); the code that
answers says why through `note_reason`, `reply` and `error_response`. Also the log filters
that keep the values a caller sent, and forged lines, out of the log.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

from onnx_serving import errors
from onnx_serving.edge.route_table import header


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
