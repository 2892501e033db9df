"""One error type, and the one place it becomes an HTTP answer, a metric and a log line.

Every refusal the service makes is a `ServingError`: an HTTP status, a reason (the label of
`onnx_input_rejections_total`, from the fixed set below) and a message for the caller that
says what was wrong and how to fix it. `answer` turns one into the response body
`{"error": "..."}` (the native API's format and V2's, as KServe's and Triton's clients parse
it), counts it by its reason and logs one WARNING line (route, status, reason, request id):
never the values the caller sent, never a traceback. An exception nobody anticipated is a
500 whose body carries a request id, and one ERROR line with its traceback and that id.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

logger = logging.getLogger("bentoml.onnx_serving.errors")

# The reasons a request is refused for: labels of onnx_input_rejections_total. Fixed, so the
# metric's cardinality is; `reason_of` maps a message to one where a raise names none.
REASONS = frozenset(
    {
        "json", "schema", "shape", "range", "size", "media_type", "body_too_large",
        "headers_too_large", "unauthorized", "timeout", "slow_body", "version", "not_found",
        "method", "model_rejected", "output_too_large",
    }
)  # fmt: skip

_GUESSES = [
    ("output_too_large", r"MAX_OUTPUT_BYTES"),
    ("model_rejected", r"could not run on this input"),
    ("size", r"too many (values|rows|cells)|larger than|too long"),
    ("range", r"not a finite|out of range"),
    ("shape", r"ragged|dimension|shape|feature|empty|same number of rows|static batch|rank"),
    ("json", r"invalid json|json_invalid|EOF while parsing|expected value"),
]


def reason_of(message: str) -> str:
    """The reason label for an input error's message, when the raise named none."""
    for reason, pattern in _GUESSES:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    return "schema"


class ServingError(ValueError):
    """A request the service refuses: `status` (4xx, or 503 for overload), `reason` (one of
    REASONS) and a message for the caller. A ValueError, so that raised inside a pydantic
    validator it becomes that validator's error."""

    status = 400

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.reason = reason if reason in REASONS else reason_of(message)


def request_id(headers: Any = None) -> str:
    """The caller's `X-Request-ID` (if it is a plain token), else a new one."""
    given = headers.get("x-request-id") if headers is not None else None
    if given and re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", given):
        return given
    return secrets.token_hex(8)


def body(message: str, **extra: Any) -> bytes:
    return json.dumps({"error": message, **extra}).encode()


def refused(
    status: int,
    reason: str,
    message: str,
    where: str,
    rid: str | None = None,
    protocol: str = "http",
) -> bytes:
    """Count and log one refusal; its JSON body."""
    from onnx_serving import (
        metrics,  # here: the offline tools use this module without BentoML's metrics
    )

    if reason not in REASONS:
        reason = reason_of(message)
    metrics.REJECTIONS.labels(reason=reason, protocol=protocol).inc()
    logger.warning("%s -> %d %s (request %s)", safe(where), status, reason, rid or request_id())
    return body(message)


def internal(exc: BaseException, where: str, headers: Any = None) -> str:
    """An exception nobody anticipated: one ERROR line with its traceback; the request id
    that line and the 500's body (`internal_error`) share."""
    rid = request_id(headers)
    logger.error("%s -> 500 (request %s)", safe(where), rid, exc_info=exc)
    return rid


def internal_error(rid: str) -> dict[str, str]:
    """The body of a 500: which request id to look for in the log, nothing of the fault."""
    message = f"internal error: the server failed on this request (request id {rid} in its log)"
    return {"error": message, "request_id": rid}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe(text: str, limit: int = 200) -> str:
    """A client-chosen string fit for one log line: control characters escaped, length cut."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."
