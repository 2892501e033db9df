"""The native JSON contract, built from the served model's signature, and the 415 guard.

    one input:  {"x": tensor}                     one output:  {"y": tensor, "model": tag}
    several:    {"inputs": {"<name>": tensor}}    several:     {"outputs": {"<name>": ...}, ...}

A tensor is nested JSON lists of the input's type (numbers, integers, booleans or strings)
and rank; inputs of rank 1 or 2 also take a flat list, one value per row. Classifiers add
"classes": the labels of the probability columns. A request that breaks a rule never
reaches the model: pydantic turns the InvalidInput raised here into BentoML's 400 with a
message that says which value was wrong and why. (Guards before this: guards.py.)
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any, ClassVar, Union

import numpy as np
from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from starlette.responses import Response

from onnx_serving.model.feeds import Feeds
from onnx_serving.model.signature import Signature, TensorSpec
from onnx_serving.model.tensors import InvalidInput, from_json, to_json

# Strict types refuse "1.5", true and null instead of coercing them (StrictFloat takes
# integers too: one type, not a union, which pydantic would try per value).
SCALARS: dict[str, Any] = {"f": StrictFloat, "i": StrictInt, "u": StrictInt, "b": StrictBool}
JSON_TYPES = {"f": "number", "i": "integer", "u": "integer", "b": "boolean", "O": "string"}


def array_of(item: Any) -> Any:
    """A JSON list of `item` that stops at its first wrong value: pydantic would otherwise
    make an error (and its message) for each of a million wrong values."""
    return Annotated[list[item], Field(fail_fast=True)]


def json_type(spec: TensorSpec, shape: str = "any") -> Any:
    """The pydantic type of one input's JSON: nested lists as deep as its rank; for rank 1 or
    2 also a flat list or rows of one value. `shape` "nested" or "flat" picks one of them."""
    scalar = SCALARS.get(spec.dtype.kind, StrictStr)
    if shape == "flat" or (shape == "nested" and spec.rank <= 1):
        return array_of(scalar)
    if spec.rank <= 2:
        rows = array_of(array_of(scalar))
        return rows if shape == "nested" else Union[array_of(scalar), rows]  # noqa: UP007
    nested = scalar
    for _ in range(spec.rank):
        nested = array_of(nested)
    return nested


def tensor_schema(spec: TensorSpec, description: str) -> dict[str, Any]:
    """JSON schema of an output: arrays as deep as its rank (a [rows, 1] column is flat)."""
    schema: dict[str, Any] = {"type": JSON_TYPES[spec.dtype.kind]}
    if spec.dtype.kind == "f":
        # JSON has no NaN or infinity: such outputs (2x of 3e38, say) are written null.
        schema["nullable"] = True
    for _ in range(1 if spec.is_column else max(spec.rank, 1)):
        schema = {"type": "array", "items": schema}
    return {**schema, "description": f"{description} {spec.datatype} {list(spec.shape)}"}


def check_feeds(sig: Signature, arrays: dict[str, np.ndarray], max_values: int) -> Feeds:
    """The rules every request meets, however it arrived: sizes, shapes, one row count."""
    count = sum(a.size for a in arrays.values())
    if count > max_values:
        raise InvalidInput(f"too many values: {count} > MAX_VALUES={max_values}")
    where = "x" if sig.single_input else "inputs.{}"
    fitted = {
        s.name: fit_shape(arrays[s.name], s, where.format(s.name), sig.batch) for s in sig.inputs
    }
    if len(fitted) > 1:
        if sig.batch != "none":
            rows = {k: len(v) for k, v in fitted.items()}
            if len(set(rows.values())) > 1:
                raise InvalidInput(f"every input needs the same number of rows, got {rows}")
        _check_shared_dimensions(sig, fitted)
    return Feeds(fitted)


def _check_shared_dimensions(sig: Signature, arrays: dict[str, np.ndarray]) -> None:
    """Inputs whose shapes name the same symbolic dimension (`batch`, `seq`) must agree on it:
    the model would fail on them (or broadcast them wrongly)."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in sig.inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim != "?":
                size = arrays[spec.name].shape[axis]
                first = seen.setdefault(dim, (spec.name, size))
                if first[1] != size:
                    raise InvalidInput(
                        f"inputs {first[0]!r} and {spec.name!r} share the dimension {dim!r}, "
                        f"but it is {first[1]} in one and {size} in the other",
                        reason="shape",
                    )


class RequestBase(BaseModel):
    """A request body. BentoML parses it with `model_validate_json`; this one first tries
    the request as its inputs' plain shape, without the union of flat and nested lists
    that pydantic would otherwise try value by value (rows of one value took 16x as long
    as a flat list), and falls back to the full model, whose errors say what was wrong."""

    model_config = ConfigDict(extra="forbid")
    # (a model for flat lists or None, a model for nested lists): set by request_model.
    fast_paths: ClassVar[tuple[Any, Any]] = (None, None)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        flat, nested = cls.fast_paths
        # The shape is told by the body's first bytes; a wrong guess only costs a fallback.
        head = json_data[:64]
        is_nested = FIRST_NESTED.search(head.encode() if isinstance(head, str) else head)
        fast = nested if flat is None or is_nested else flat
        if fast is not None and not kwargs:
            with contextlib.suppress(ValidationError):
                return cls.model_construct(feeds=fast.model_validate_json(json_data).feeds)
        return super().model_validate_json(json_data, **kwargs)


# A body whose input (`x`, or the input's own name) starts with a nested list: `"x": [[`.
FIRST_NESTED = re.compile(rb'"[^"]*"\s*:\s*\[\s*\[')


def request_model(
    sig: Signature, max_values: int, max_rows: int | None = None, max_rows_setting: str = ""
) -> type[BaseModel]:
    """The request body for `sig`; the validated field `feeds` holds the model's Feeds.

    With `max_rows`, for adaptive batching: the model must be batchable and a request must
    fit in one batch (BentoML would split a larger one, and its halves couldn't be joined).
    """

    def decode(spec: TensorSpec, where: str) -> Any:
        return lambda v: from_json(v, spec.dtype, where, sig.allow_nan)

    def to_feeds(arrays: dict[str, np.ndarray]) -> Feeds:
        if max_rows is not None and not sig.batchable:
            raise InvalidInput(
                f"adaptive batching does not apply to this model: {sig.batching_note()}; "
                "send it to /predict"
            )
        feeds = check_feeds(sig, arrays, max_values)
        if max_rows is not None and feeds.rows > max_rows:
            raise InvalidInput(
                f"too many rows for adaptive batching: {feeds.rows} > {max_rows_setting}="
                f"{max_rows}; send large requests to /predict or /predict_binary"
            )
        return feeds

    def build(shape: str) -> type[BaseModel]:
        return create_model("PredictRequest", __base__=RequestBase, feeds=(field(shape), ...))

    def field(shape: str) -> Any:
        return single_field(shape) if sig.single_input else inputs_field(shape)

    def single_field(shape: str) -> Any:
        (spec,) = sig.inputs
        return Annotated[
            json_type(spec, shape),
            AfterValidator(decode(spec, "x")),
            AfterValidator(lambda a: to_feeds({spec.name: a})),
            Field(
                alias="x",
                # The input's own name is taken too, as is the several-input form.
                validation_alias=AliasChoices("x", spec.name, AliasPath("inputs", spec.name))
                if spec.name not in ("x", "inputs")
                else None,
                description="The model's input "
                f"{spec.name!r} ({spec.datatype} {list(spec.shape)}): nested lists, or for "
                "shape [rows] or [rows, n] a flat list of one value per row. Also taken "
                f'under its own name ({{"{spec.name}": ...}} or {{"inputs": {{"{spec.name}": '
                "...}}).",
                examples=[[1.0, 2.0, 3.5]] if spec.dtype.kind == "f" else None,
                json_schema_extra={"minItems": 1},
            ),
        ]

    def inputs_field(shape: str) -> Any:
        names = {f"input_{i}": s for i, s in enumerate(sig.inputs)}
        inputs = create_model(
            "Inputs",
            __config__=ConfigDict(extra="forbid"),
            **{
                key: (
                    Annotated[
                        json_type(s, shape),
                        AfterValidator(decode(s, f"inputs.{s.name}")),
                        Field(
                            alias=s.name,
                            description=f"{s.datatype} {list(s.shape)}",
                            json_schema_extra={"minItems": 1},
                        ),
                    ],
                    ...,
                )
                for key, s in names.items()
            },
        )
        return Annotated[
            inputs,
            AfterValidator(lambda m: to_feeds({s.name: getattr(m, k) for k, s in names.items()})),
            Field(alias="inputs", description="One tensor per named input of the model."),
        ]

    model = build("any")
    # The plain shapes: flat (one input of rank 1 or 2) and nested as deep as each rank.
    flat = sig.single_input and sig.inputs[0].rank <= 2
    model.fast_paths = (build("flat") if flat else None, build("nested"))
    return model


def response_model(sig: Signature) -> type[BaseModel]:
    """The response body for `sig` (its schema documents each output's type and shape)."""
    fields: dict[str, Any] = {}
    if sig.single_output:
        (spec,) = sig.outputs
        doc = "One prediction per row, in order; a flat list for one value per row."
        fields["y"] = (Annotated[Any, WithJsonSchema(tensor_schema(spec, doc))], ...)
    else:
        schema = {
            "type": "object",
            "properties": {s.name: tensor_schema(s, "Output") for s in sig.outputs},
            "description": "One tensor per named output of the model, one row per input row.",
        }
        fields["outputs"] = (Annotated[dict[str, Any], WithJsonSchema(schema)], ...)
    if sig.classes:
        doc = "The class labels, in the order of the probability (or score) columns."
        fields["classes"] = (list[int | str], Field(description=doc))
    doc = "The tag of the model that answered: name:version."
    fields["model"] = (str, Field(description=doc))
    return create_model("PredictResponse", **fields)


def responder(sig: Signature, tag: str, model: type[BaseModel]) -> Any:
    """outputs -> the HTTP response: the body built unchecked (the values come from the
    model), serialized by pydantic, and `X-Model` saying which version answered."""
    extra = {"classes": list(sig.classes)} if sig.classes else {}
    flat = {s.name: s.is_column for s in sig.outputs}
    headers = {"X-Model": tag}
    if sig.single_output:
        name = sig.outputs[0].name

        def body(out: dict) -> BaseModel:
            return model.model_construct(y=to_json(out[name], flat[name]), model=tag, **extra)
    else:

        def body(out: dict) -> BaseModel:
            outputs = {k: to_json(v, flat[k]) for k, v in out.items()}
            return model.model_construct(outputs=outputs, model=tag, **extra)

    return lambda out: Response(
        body(out).model_dump_json(), media_type="application/json", headers=headers
    )


def fit_shape(values: np.ndarray, spec: TensorSpec, where: str, batch: str) -> np.ndarray:
    """`values` in the input's rank, its static dimensions checked.

    Inputs of rank 1 or 2 take rows either way: a flat list is one value per row of a
    [rows, 1] input, and rows of one value feed a [rows] input.
    """
    if spec.rank <= 2 and values.ndim == 2:
        width = 1 if spec.rank == 1 else spec.width
        if width is not None and values.shape[1] != width:
            raise InvalidInput(f"the model takes {width} feature(s) per row, got {values.shape[1]}")
    if spec.rank == 2 and values.ndim == 1:
        values = values.reshape(-1, 1)
    elif spec.rank == 1 and values.ndim == 2:
        values = values.reshape(-1)
    if values.ndim != spec.rank:
        raise InvalidInput(
            f"{where} has {values.ndim} dimension(s) {list(values.shape)}; the model's input "
            f"{spec.name!r} has {spec.rank}: {list(spec.shape)}"
        )
    # A static batch size is met by running in slices; every other static size must match.
    skip = 1 if batch == "static" else 0
    for axis, (got, want) in enumerate(zip(values.shape, spec.shape, strict=True)):
        if axis >= skip and isinstance(want, int) and want >= 0 and got != want:
            raise InvalidInput(
                f"{where} has shape {list(values.shape)}; the model's input {spec.name!r} "
                f"takes {list(spec.shape)} (dimension {axis} must be {want})"
            )
    return values
