"""The native JSON contract (protocols/native.py): requests become checked arrays, responses take
the model's outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT
from demo_model import DEMO, PredictRequest, PredictResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from onnx_serving.model import store as model_store
from onnx_serving.model.import_options import ImportOptions
from onnx_serving.protocols.native import request_model, responder


def x_of(body: str, model: type = PredictRequest) -> np.ndarray:
    return model.model_validate_json(body).feeds.arrays["x"]


# Request bodies shaped like tensors: numbers mostly, now and then a value of another type,
# a ragged row, a row that is a number, an empty list.
CELLS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([True, None, "1.5", [], [1.0]]),
)


TENSORS = st.one_of(
    st.lists(CELLS, max_size=6),
    st.lists(st.lists(CELLS, min_size=0, max_size=3), max_size=5),
    st.lists(st.lists(st.lists(CELLS, max_size=2), max_size=2), max_size=2),
)


FIXTURES = ROOT / "tests" / "fixtures" / "models"


# The demo ([rows, 1]), three named features ([rows, 3]) and two inputs ([rows, 3] each).
SHAPES = {
    "demo": PredictRequest,
    **{
        name: request_model(
            model_store.inspect((FIXTURES / f"{name}.onnx").read_bytes(), ImportOptions()), 1000
        )
        for name in ("sklearn_linear", "torch_two_inputs")
    },
}


@pytest.mark.parametrize(
    ("body", "shape"),
    [('{"x": [1, 2.5, -3]}', (3, 1)), ('{"x": [[1], [3], [5]]}', (3, 1))],
)
def test_valid_requests_become_float32_arrays(body: str, shape: tuple[int, int]) -> None:
    x = x_of(body)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == shape


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"x": ["1.5"]}', "valid number"),
        ('{"x": [true]}', "valid number"),
        ('{"x": [null]}', "valid number"),
        ('{"x": [{"a": 1}]}', "valid number"),
        ('{"x": [[1], [2, 3]]}', "ragged rows: x[0] has 1 value(s) but x[1] has 2 value(s)"),
        ('{"x": [1, [2]]}', "valid number"),
        ('{"x": [NaN]}', "not a finite float32"),
        ('{"x": [1, Infinity]}', "x[1] = inf"),
        ('{"x": [-Infinity]}', "not a finite float32"),
        ('{"x": [1e39]}', "not a finite float32"),
        ('{"x": [1e400]}', "not a finite float32"),
        ('{"x": []}', "x is empty"),
        ('{"x": [[]]}', "empty row"),
        ("{}", "Field required"),
        ('{"x": [1], "extra": 2}', "Extra inputs"),
        ('{"x": [1, 2', "Invalid JSON"),
        ('{"x": 5}', "valid array"),
        ('{"x": [[1, 2]]}', "the model takes 1 feature(s) per row, got 2"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate_json(body)
    assert message in str(info.value)


def test_value_limit() -> None:
    ten = request_model(DEMO, max_values=10)
    x_of('{"x": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}', ten)
    with pytest.raises(ValidationError, match="too many values: 11 > MAX_VALUES=10"):
        x_of('{"x": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}', ten)


def test_batched_request_must_fit_one_batch() -> None:
    batched = request_model(DEMO, 1_000, max_rows=3, max_rows_setting="BATCH_MAX_SIZE")
    assert x_of('{"x": [1, 2, 3]}', batched).shape == (3, 1)
    with pytest.raises(ValidationError, match="too many rows for adaptive batching: 4 > BATCH_MAX"):
        x_of('{"x": [1, 2, 3, 4]}', batched)


def test_response_flattens_one_value_per_row() -> None:
    respond = responder(DEMO, "m:1", PredictResponse)
    y = np.array([[2.0], [4.0]], dtype=np.float32)
    assert json.loads(respond({"y": y}).body) == {"y": [2.0, 4.0], "model": "m:1"}


def test_rank_1_models_take_rows_of_one_value() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["v"], ["w"])],
        "negate",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sig = model_store.inspect(model.SerializeToString(), ImportOptions())
    request = request_model(sig, 100)
    assert request.model_validate_json('{"x": [[1.0], [-2.5]]}').feeds.arrays["v"].shape == (2,)
    with pytest.raises(ValidationError, match="takes 1 feature"):
        request.model_validate_json('{"x": [[1.0, 2.0]]}')


@pytest.mark.parametrize("name", SHAPES)
@settings(max_examples=300, deadline=None)
@given(x=TENSORS, y=TENSORS)
def test_the_fast_path_decides_as_the_full_model(name: str, x: list, y: list) -> None:
    """validation.RequestBase tries the plain shapes first: it must accept exactly what the
    full model (pydantic's own model_validate_json) accepts, with the same arrays."""
    model = SHAPES[name]
    body = json.dumps({"inputs": {"a": x, "b": y}} if name == "torch_two_inputs" else {"x": x})
    full = BaseModel.model_validate_json.__func__  # the full model, without the fast path
    try:
        want = full(model, body).feeds.arrays
    except ValidationError:
        with pytest.raises(ValidationError):
            model.model_validate_json(body)
        return
    got = model.model_validate_json(body).feeds.arrays
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
