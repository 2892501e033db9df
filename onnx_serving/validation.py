"""Request and response shapes, and every rule a request must pass, in one place.

A request that breaks a rule never reaches the model: pydantic turns the
ValueError raised here into BentoML's 400 response with a message that says
which value was wrong and why.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Self

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    model_validator,
)

from .config import settings

FLOAT32_MAX = float(np.finfo(np.float32).max)

# Numbers only: strict types refuse "1.5", true and null instead of coercing them.
Number = StrictFloat | StrictInt
Rows = list[Number] | list[list[Number]]

EXAMPLE_X = [1.0, 2.0, 3.5]


class InvalidInput(ValueError):
    """Input that is well-formed JSON but can't be served; answered with a 400."""


def to_array(x: list, max_values: int) -> np.ndarray:
    """Turn validated JSON rows into a float32 [rows, features] array, or raise ValueError."""
    if len(x) == 0:
        raise ValueError("x is empty: send at least one value")
    if isinstance(x[0], list):
        width = len(x[0])
        if width == 0:
            raise ValueError("x[0] is an empty row")
        for i, row in enumerate(x):
            if not isinstance(row, list) or len(row) != width:
                got = len(row) if isinstance(row, list) else "a number"
                raise ValueError(f"ragged rows: x[0] has {width} values but x[{i}] has {got}")
    count = len(x) * (len(x[0]) if isinstance(x[0], list) else 1)
    if count > max_values:
        raise ValueError(f"too many values: {count} > MAX_VALUES={max_values}")
    wide = np.asarray(x, dtype=np.float64)
    return check_float32(wide.reshape(len(x), -1), name="x")


def check_float32(values: np.ndarray, name: str, first_row: int = 0) -> np.ndarray:
    """Refuse NaN, infinity and values float32 can't hold; return a float32 copy.

    `values` is [rows, features]; `first_row` numbers the rows in the message when
    they are one chunk of a larger file.
    """
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"{name}[{first_row + row}]"
        if values.shape[1] > 1:
            where += f"[{col}]"
        raise InvalidInput(
            f"{where} = {float(values[row, col])} is not a finite float32 "
            f"(NaN, infinity and |v| > {FLOAT32_MAX:.4g} are refused)"
        )
    return values.astype(np.float32)


def check_width(x: np.ndarray, n_features: int | None) -> None:
    """Rows must have the width the model takes (None: the model doesn't say)."""
    if n_features is not None and x.shape[1] != n_features:
        raise InvalidInput(f"the model takes {n_features} feature(s) per row, got {x.shape[1]}")


def _rows_to_array(x: list) -> np.ndarray:
    return to_array(x, settings().max_values)


# After validation, `x` is the float32 array the model takes; its JSON schema stays "rows".
InputRows = Annotated[
    Rows,
    AfterValidator(_rows_to_array),
    Field(
        description="Rows to predict: [1.0, 2.0] for a one-feature model, "
        "[[1.0, 0.5], [2.0, 0.1]] for a model with two features.",
        examples=[EXAMPLE_X],
    ),
]


class PredictRequest(BaseModel):
    """One row per value of `x`, or one list per row for models with several features.

    Use `request_model()` for the subclass that knows the served model's width.
    """

    model_config = ConfigDict(extra="forbid")
    # Set per served model by request_model(); None means "don't check".
    n_features: ClassVar[int | None] = None
    max_rows: ClassVar[int | None] = None
    max_rows_setting: ClassVar[str] = ""

    x: InputRows

    @model_validator(mode="after")
    def _fits_the_model(self) -> Self:
        check_width(self.x, self.n_features)
        rows = len(self.x)
        if self.max_rows is not None and rows > self.max_rows:
            raise ValueError(
                f"too many rows for adaptive batching: {rows} > {self.max_rows_setting}="
                f"{self.max_rows}; send large requests to /predict or /predict_binary"
            )
        return self


def request_model(
    n_features: int | None, max_rows: int | None = None, max_rows_setting: str = ""
) -> type[PredictRequest]:
    """PredictRequest for a model that takes `n_features` values per row."""
    return type(
        "PredictRequest",
        (PredictRequest,),
        {
            "__doc__": PredictRequest.__doc__,
            "n_features": n_features,
            "max_rows": max_rows,
            "max_rows_setting": max_rows_setting,
        },
    )


class PredictResponse(BaseModel):
    y: list[float] | list[list[float]] = Field(description="One prediction per row, in order.")
    model: str = Field(description="The tag of the model that answered: name:version.")

    @classmethod
    def from_array(cls, y: np.ndarray, model: str) -> PredictResponse:
        y = y.reshape(len(y), -1)
        values = y[:, 0].tolist() if y.shape[1] == 1 else y.tolist()
        # Already checked by construction; skip re-validating thousands of floats.
        return cls.model_construct(y=values, model=model)


class BatchPredictions:
    """The predictions for a whole adaptive batch, as BentoML's batching hands them out.

    BentoML stacks the requests of a batch along rows, calls the API once, and gives
    each request its share of the result with `result[start:stop]`. Slicing this
    object yields that request's own PredictResponse, so /predict_batched answers in
    the same shape as /predict.
    """

    def __init__(self, y: np.ndarray, model: str) -> None:
        self.y, self.model = y, model

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows: slice) -> PredictResponse:
        return PredictResponse.from_array(self.y[rows], self.model)


def binary_rows(body: bytes, width: int, max_values: int) -> np.ndarray:
    """A little-endian float32 body as a [rows, width] array, or InvalidInput."""
    if not body:
        raise InvalidInput("the body is empty: send little-endian float32 values")
    if len(body) % (4 * width):
        raise InvalidInput(
            f"the body has {len(body)} bytes: not whole rows of {width} float32 value(s)"
        )
    if len(body) // 4 > max_values:
        raise InvalidInput(f"too many values: {len(body) // 4} > MAX_VALUES={max_values}")
    x = np.frombuffer(body, dtype="<f4").reshape(-1, width)
    return check_float32(x, name="x")


# Which media type each route accepts. BentoML would otherwise parse any body as JSON.
ROUTE_MEDIA_TYPES = {
    "/predict": "application/json",
    "/predict_batched": "application/json",
    "/predict_file": "multipart/form-data",
    "/predict_binary": "application/octet-stream",
}


class ContentTypeGuard:
    """ASGI middleware: answer 415 when a POST's Content-Type doesn't fit its route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            wanted = ROUTE_MEDIA_TYPES.get(scope["path"].rstrip("/") or "/")
            if wanted is not None:
                header = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
                got = header.split(";")[0].strip().lower()
                if got != wanted:
                    body = json.dumps(
                        {"error": f"Content-Type must be {wanted}, got {got or 'none'}"}
                    ).encode()
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 415,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
