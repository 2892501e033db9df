"""Feeds (model/feeds.py) through adaptive batching's container (_patches/bentoml_container.py)."""

from __future__ import annotations

import json

import numpy as np
from demo_model import DEMO, PredictResponse, double

from onnx_serving._patches.bentoml_container import FeedsContainer
from onnx_serving.model.feeds import BatchPredictions, Feeds
from onnx_serving.protocols.native import responder


def test_batched_requests_stack_and_each_gets_its_rows() -> None:
    # BentoML stacks the requests of a batch with the container registered for Feeds...
    parts = [Feeds({"x": np.full((n, 1), n, np.float32)}) for n in (1, 3, 2)]
    batch, indices = FeedsContainer.batches_to_batch(parts)
    assert batch.rows == 6 and indices == [0, 1, 4, 6]
    # ...and splits the result with result[start:stop], one slice per request.
    respond = responder(DEMO, "m:1", PredictResponse)
    result = BatchPredictions(double(batch), respond)
    assert len(result) == 6
    answer = result[1:4]
    assert json.loads(answer.body) == {"y": [6.0, 6.0, 6.0], "model": "m:1"}
    assert answer.headers["X-Model"] == "m:1"
