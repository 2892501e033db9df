"""POST /predict answered at the inner end of the edge, past BentoML's per-request API path.

The API stays declared on the service class: its OpenAPI document, its request and response
models and in-process calls are BentoML's. An HTTP request to it is answered here instead,
after every layer of the edge has passed it (admission, drain, API keys, media type, body and
value budgets, the error contract) and inside BentoML's own metrics, tracing and timeout
middleware, so every guarantee and every metric holds. What it leaves out is what BentoML
does per request that a JSON route with no context needs: the context middleware, Starlette's
routing, and `api_endpoint`'s dependency-injection lookups, imports, `inspect` checks and
background tasks, about a quarter of a one-row request's CPU (docs: Performance, *Where a
request's CPU goes*). The request is parsed by the same model BentoML would use, and a
validation error is answered in the shape BentoML gives it, which the error contract then
rewrites as it does BentoML's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

# (feeds, request headers, client address) -> the whole response, success or refusal.
Answer = Callable[[Any, Headers, str], Response]


class PredictRoute:
    """ASGI middleware: `POST /predict` answered by the bound service; anything else, or a
    request before a service is bound, passes on to BentoML."""

    PATH: ClassVar[str] = "/predict"
    _bound: ClassVar[tuple[Callable[[bytes], Any], Answer] | None] = None

    def __init__(self, app: Any) -> None:
        self.app = app

    @classmethod
    def bind(cls, request_model: Any, answer: Answer) -> None:
        """Serve /predict with `answer`, its bodies parsed by `request_model` (the API's
        input model, as BentoML built it)."""
        cls._bound = (request_model.model_validate_json, answer)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        bound = self._bound
        if (
            bound is None
            or scope["type"] != "http"
            or scope["path"] != self.PATH
            or scope["method"] != "POST"
        ):
            return await self.app(scope, receive, send)
        parse, answer = bound
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            request = parse(body or b"{}")  # an empty body as BentoML's JSON serde reads it
        except ValidationError as exc:
            response: Response = JSONResponse(
                {
                    "error": f"{exc.error_count()} validation error for {exc.title}",
                    "detail": exc.errors(include_context=False, include_input=False),
                },
                status_code=400,
            )
        else:
            client = scope.get("client")
            response = answer(request.feeds, Headers(scope=scope), client[0] if client else "")
        await response(scope, receive, send)
