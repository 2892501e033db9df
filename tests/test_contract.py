"""The request contract's pieces in-process: the error contract's one format, count and log
line, the route table, the routing watcher that outlives any file, the shape and output
limits. (The same behaviour against real servers: test_hostile.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnx_serving import errors
from onnx_serving.config import Settings
from onnx_serving.edge.error_contract import ErrorContract, QuietValidationLog, error_response
from onnx_serving.edge.route_table import ROUTES, body_limit, json_budget, route_of
from onnx_serving.model.tensors import InvalidInput, check_shape
from onnx_serving.versions.router import Router, Routing


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


def test_the_route_table_names_every_prediction_route_and_its_limit() -> None:
    settings = Settings()
    assert route_of("/predict/").path == "/predict"
    assert route_of("/v2/models/m/versions/3/infer").json_values
    assert route_of("/livez").auth is False and route_of("/nope") is None
    for path in ("/predict", "/predict_batched", "/predict_binary", "/predict_file"):
        assert ROUTES[path].media_types and body_limit(ROUTES[path], settings)[0] > 0
    assert body_limit(route_of("/predict"), settings) == (settings.json_limit, "MAX_JSON_BYTES")
    assert json_budget(settings) >= 2 * settings.max_values


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1] * 17, "MAX_RANK=16"),
        ([0, 2**63], "MAX_VALUES"),
        ([1001, 1000], "too many values"),
        ([3, -1], "negative"),
    ],
)
def test_shapes_are_bounded_before_anything_is_allocated(shape: list, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_shape(shape, "x", 1_000_000, 16)
    assert check_shape([1000, 1000], "x", 1_000_000, 16) == 1_000_000


def test_the_routing_watcher_outlives_any_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "routing.yaml"
    file.write_text("default: v1\n")
    router = Router(["m:v1", "m:v2"], Routing(default="v1"), file)

    async def scenario() -> list[str]:
        watcher = asyncio.create_task(router.watch(every_s=0.05))
        seen = []

        async def step(content: bytes | None, mtime: int) -> None:
            if content is None:
                file.unlink()
            else:
                file.write_bytes(content)
                import os

                os.utime(file, (mtime, mtime))
            await asyncio.sleep(0.3)
            seen.append(router.default)

        await step(b"default: \xff\xfe v2\n", 1)  # not UTF-8: kept
        await step(b"default: [unclosed\n", 2)  # not YAML: kept
        await step(b"default: v9\n", 3)  # not served: kept
        await step(None, 4)  # deleted: kept
        await step(b"default: v2\n", 5)  # good again: applied
        file.chmod(0)
        await step(b"default: v1\n", 6)  # root reads it anyway; applied either way
        assert not watcher.done()
        watcher.cancel()
        return seen

    with caplog.at_level(logging.WARNING, logger="bentoml.onnx_serving.versions.router"):
        seen = asyncio.run(scenario())
    assert seen == ["m:v1", "m:v1", "m:v1", "m:v1", "m:v2", "m:v1"]
    failures = [r for r in caplog.records if "not applied" in r.getMessage()]
    assert len(failures) == 4  # each failure once, not once a poll
    assert "not UTF-8" in failures[0].getMessage()


def test_outputs_past_max_output_bytes_are_refused() -> None:
    from onnx_serving.model.feeds import Feeds
    from onnx_serving.model.runner import LoadedModel
    from onnx_serving.model.signature import Signature, TensorSpec

    class Session:
        def run(self, _: Any, arrays: dict) -> list:
            return [np.zeros((len(arrays["x"]), 1000), np.float32)]

    sig = Signature(
        inputs=(TensorSpec("x", "tensor(float)", ("batch", 1)),),
        outputs=(TensorSpec("y", "tensor(float)", ("batch", 1000)),),
    )
    model = LoadedModel("m:v", Session(), sig, {}, max_output_bytes=4000 * 10)
    assert model.run(Feeds({"x": np.zeros((10, 1), np.float32)}))["y"].shape == (10, 1000)
    with pytest.raises(errors.ServingError, match="MAX_OUTPUT_BYTES") as refused:
        model.run(Feeds({"x": np.zeros((11, 1), np.float32)}))
    assert refused.value.status == 413


def test_a_name_split_across_chunks_is_still_counted() -> None:
    """A client that cuts its body between each name's quote and its colon: the quote is
    carried to the next chunk, so every name is counted."""
    from onnx_serving.edge.guards import BodyBudget
    from onnx_serving.edge.route_table import JSON_MEMBERS

    chunks = [b'{"x": [1]']
    chunks += [b', "k%d"' % i + b" " * (i % 3) for i in range(JSON_MEMBERS + 1)]
    chunks = [c if i == 0 else b":0" + c for i, c in enumerate(chunks)] + [b":0}"]
    reached = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages = iter(
        [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        + [{"type": "http.request", "body": b"", "more_body": False}]
    )
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(BodyBudget(app, Settings())(scope, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert b"names more than 65,536 fields" in sent[1]["body"]
