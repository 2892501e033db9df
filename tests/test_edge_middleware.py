"""Unit tests, in-process: the guards through an ASGI transport (httpx), and BentoML's
dispatcher as patched (_patches/bentoml_dispatcher.py) driving a stub model."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from onnx_serving._patches.bentoml_dispatcher import GreedyDispatcher
from onnx_serving.config import Settings
from onnx_serving.edge.error_contract import ErrorContract
from onnx_serving.edge.guards import ApiKeyGuard, BodyBudget, ContentTypeGuard

KEY = "s3cret-key"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


def edge(**settings: Any) -> httpx.AsyncClient:
    """The app behind the guards, in the order service.py adds them (outermost first)."""
    routes = [Route(p, echo, methods=["GET", "POST"]) for p in ("/predict", "/livez")]
    app: Any = Starlette(routes=routes)
    app = BodyBudget(app, settings=Settings(**settings))
    app = ContentTypeGuard(app)
    app = ApiKeyGuard(app, hashes=(hashlib.sha256(KEY.encode()).hexdigest(),))
    app = ErrorContract(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_key_is_needed_where_the_route_table_says_and_only_there() -> None:
    async def go() -> list[int]:
        async with edge() as client:
            json = {"headers": {"Content-Type": "application/json"}, "content": b"{}"}
            return [
                (await client.post("/predict", **json)).status_code,
                (await client.post("/predict", **json | {"headers": {
                    "Content-Type": "application/json", "X-API-Key": "wrong"}})).status_code,
                (await client.post("/predict", **json | {"headers": {
                    "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}})
                 ).status_code,
                (await client.get("/livez")).status_code,  # probes never need a key
            ]  # fmt: skip

    assert run(go()) == [401, 401, 200, 200]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("text/plain", 415),
        ("application/octet-stream", 415),
        (None, 415),
    ],
)
def test_a_post_s_media_type_must_fit_its_route(content_type: str | None, status: int) -> None:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}"}
        if content_type:
            headers["Content-Type"] = content_type
        async with edge() as client:
            return await client.post("/predict", headers=headers, content=b"{}")

    response = run(go())
    assert response.status_code == status, response.text
    if status != 200:
        assert response.json()["error"], response.text


@pytest.mark.parametrize(
    ("size", "status"), [(1000, 200), (1024, 200), (1025, 413)], ids=["under", "at", "over"]
)
def test_a_body_past_its_route_s_limit_is_refused_before_the_app(size: int, status: int) -> None:
    body = b'{"x": "' + b"a" * (size - 10) + b'"} '  # exactly `size` bytes

    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        async with edge(max_json_bytes=1024) as client:
            return await client.post("/predict", headers=headers, content=body)

    response = run(go())
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"bytes": size}
    else:
        assert "MAX_JSON_BYTES" in response.json()["error"]


class StubModel:
    """A model the test controls: each batch waits until released, and answers each
    request with its own input doubled."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, inputs: tuple[int, ...]) -> list[int]:
        self.batches.append(list(inputs))
        await self.release.wait()
        return [2 * x for x in inputs]


def dispatch(max_batch_size: int) -> tuple[Any, StubModel]:
    model = StubModel()
    dispatcher = GreedyDispatcher(
        10_000, max_batch_size, fallback=lambda: None, get_batch_size=lambda x: 1
    )
    return dispatcher(model), model


def test_a_lone_request_goes_at_once_and_the_queue_goes_in_one_batch_when_the_model_is_free() -> (
    None
):
    async def go() -> tuple[list[int], list[list[int]]]:
        call, model = dispatch(max_batch_size=3)
        first = asyncio.ensure_future(call(1))
        await asyncio.sleep(0.05)
        assert model.batches == [[1]]  # not held back for more: the model was free
        rest = [asyncio.ensure_future(call(x)) for x in (2, 3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        assert model.batches == [[1]]  # the model is busy: the others queue
        model.release.set()
        answers = await asyncio.gather(first, *rest)
        return answers, model.batches

    answers, batches = run(go())
    assert answers == [2, 4, 6, 8, 10, 12]  # each caller gets its own answer
    assert batches == [[1], [2, 3, 4], [5, 6]]  # up to max_batch_size, in arrival order
