"""The baseline: FastAPI + ONNX Runtime, written the way the tutorials write it.

Run with plain uvicorn (`uvicorn benchmarks.baseline_fastapi:app`). Deliberately
untuned: default session options (threads held to the cores it runs on), a pydantic body
model, a dict response, no batching.
It loads the same model from the BentoML store (BASELINE_MODEL, default linear-2x) so
both servers compute the same thing: rows of features in, the first output out.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

model = bentoml.models.get(os.environ.get("BASELINE_MODEL") or "linear-2x:latest")
# ONNX Runtime's default thread pool pins one thread per core of the machine, whatever cores
# the process was given: held to those, so the bench's one server core means one core here too.
options = ort.SessionOptions()
options.intra_op_num_threads = len(os.sched_getaffinity(0))
session = ort.InferenceSession(model.path_of("model.onnx"), sess_options=options)
model_input = session.get_inputs()[0]
width = model_input.shape[-1] if isinstance(model_input.shape[-1], int) else 1

app = FastAPI()


class PredictIn(BaseModel):
    x: list[list[float]] | list[float]


@app.post("/predict")
async def predict(body: PredictIn) -> dict:
    x = np.array(body.x, dtype=np.float32).reshape(-1, width)
    y = session.run(None, {model_input.name: x})[0]
    return {"y": y.tolist(), "model": str(model.tag)}
