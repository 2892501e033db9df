"""The demo model's signature and contract, for the unit tests: read from the file
train_and_save.py exports, with `double`, the model itself in NumPy."""

from __future__ import annotations

import numpy as np

import train_and_save
from onnx_serving.model import store as model_store
from onnx_serving.model.feeds import Feeds
from onnx_serving.model.import_options import ImportOptions
from onnx_serving.protocols.native import request_model, response_model

DEMO = model_store.inspect(train_and_save.build_onnx(2.0, None), ImportOptions())
PredictRequest = request_model(DEMO, max_values=1_000_000)
PredictResponse = response_model(DEMO)


def double(feeds: Feeds) -> dict[str, np.ndarray]:
    return {"y": (2 * feeds.arrays["x"]).astype(np.float32)}
