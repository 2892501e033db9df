"""Tensors (model/tensors.py): shapes bounded before anything is allocated."""

from __future__ import annotations

import pytest

from onnx_serving.model.tensors import InvalidInput, check_shape


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
