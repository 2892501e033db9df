"""The guards (edge/guards.py) through an ASGI transport: keys, media types, body limits and JSON
counting.
"""

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

from onnx_serving.config import Settings
from onnx_serving.edge.error_contract import ErrorContract
from onnx_serving.edge.guards import Guards

KEY = "s3cret-key"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


def edge(**settings: Any) -> httpx.AsyncClient:
    """The app behind the guards and the error contract, as service.py has them."""
    routes = [Route(p, echo, methods=["GET", "POST"]) for p in ("/predict", "/livez")]
    app: Any = Starlette(routes=routes)
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    app = Guards(app, settings=Settings(**{"api_key_sha256": sha} | settings))
    app = ErrorContract(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


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

    assert asyncio.run(go()) == [401, 401, 200, 200]


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

    response = asyncio.run(go())
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

    response = asyncio.run(go())
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"bytes": size}
    else:
        assert "MAX_JSON_BYTES" in response.json()["error"]


@pytest.mark.parametrize(
    ("members", "status"), [(39_321, 200), (65_536, 200), (65_537, 413)], ids=str
)
def test_names_are_counted_unless_the_length_alone_bounds_them(members: int, status: int) -> None:
    """A body of Content-Length n holds at most n / 3 names, so short ones go uncounted
    (39,321 members of 5 bytes fill the 196,608 bytes that are never counted); past that,
    the names are counted, and one past JSON_MEMBERS is refused before the app has it."""
    body = b"{" + b'"":1,' * (members - 1) + b'"":1}'

    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        async with edge() as client:
            return await client.post("/predict", headers=headers, content=body)

    response = asyncio.run(go())
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"bytes": len(body)}
    else:
        assert "names more than 65,536 fields" in response.json()["error"]


def test_a_name_split_across_chunks_is_still_counted() -> None:
    """A client that cuts its body between each name's quote and its colon: the quote is
    carried to the next chunk, so every name is counted."""
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
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"application/json")],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(Guards(app, Settings())(scope, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert b"names more than 65,536 fields" in sent[1]["body"]
