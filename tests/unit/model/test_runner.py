"""The runner (model/runner.py): outputs bounded by MAX_OUTPUT_BYTES."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from onnx_serving import errors


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
