"""The error contract (edge/error_contract.py): one format, one log line, request ids for 500s."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from onnx_serving import errors
from onnx_serving.edge.error_contract import ErrorContract, QuietValidationLog, error_response
from onnx_serving.model.tensors import InvalidInput


def call(app: Any, path: str = "/predict", headers: list | None = None) -> tuple[int, dict]:
    """One request through an ASGI app: its status and JSON body."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or []}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_an_unexpected_exception_is_a_500_with_a_request_id_and_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(scope: dict, receive: Any, send: Any) -> None:
        raise RuntimeError("secret internals")

    with caplog.at_level(logging.WARNING):
        status, body = call(ErrorContract(broken))
    assert status == 500 and "secret internals" not in body["error"]
    rid = body["request_id"]
    assert rid in body["error"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and rid in record.getMessage()
    assert record.exc_info is not None  # the traceback, once, in the log only


def test_a_serving_error_is_its_status_and_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refusing(scope: dict, receive: Any, send: Any) -> None:
        exc = errors.ServingError("the input holds 42 secret values", 413, "size")
        await error_response(exc)(scope, receive, send)

    with caplog.at_level(logging.INFO):
        status, body = call(ErrorContract(refusing), headers=[(b"x-request-id", b"abc-1")])
    assert status == 413 and body == {"error": "the input holds 42 secret values"}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == "POST /predict -> 413 size (request abc-1)"


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"Internal Server Error", 500, "internal error"),
        (b'[{"error": "bad x value"}]', 400, "bad x value"),  # BentoML's own 4xx shape
        (
            b'{"error": "1 validation error for PredictRequestIODescriptor", "detail": [{"type":'
            b' "value_error", "loc": ["x", "list[float]", 0], "msg": "Value error, x is empty"}]}',
            400,
            "x.0: x is empty",
        ),
        (b"not json at all", 404, "not json at all"),
    ],
    ids=["plain-500", "bentoml-list", "validation", "plain-404"],
)
def test_every_error_body_leaves_in_one_format(raw: bytes, status: int, message: str) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": raw})

    got, body = call(ErrorContract(app))
    assert got == status and message in body["error"]


def test_bentoml_s_error_log_keeps_real_failures_only() -> None:
    quiet = QuietValidationLog()

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "x",
            logging.ERROR,
            "f",
            1,
            "Exception on %s [%s]",
            ("/p", "POST"),
            (type(exc), exc, None),
        )

    assert not quiet.filter(record(InvalidInput("x[0] = 7 is out of range")))
    kept = record(RuntimeError("boom"))
    assert quiet.filter(kept) and "-> 500 (request " in kept.getMessage()
