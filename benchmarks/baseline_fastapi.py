"""The baseline: FastAPI + ONNX Runtime, written the way the tutorials write it.

Run with plain uvicorn (`uvicorn benchmarks.baseline_fastapi:app`). Deliberately
untuned: default session options, a pydantic body model, a dict response. It loads
the same model from the BentoML store so both servers compute the same thing.
"""

from __future__ import annotations

import bentoml
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

model = bentoml.models.get("linear-2x:latest")
session = ort.InferenceSession(model.path_of("model.onnx"))
input_name = session.get_inputs()[0].name

app = FastAPI()


class PredictIn(BaseModel):
    x: list[float]


@app.post("/predict")
async def predict(body: PredictIn) -> dict:
    x = np.array(body.x, dtype=np.float32).reshape(-1, 1)
    y = session.run(None, {input_name: x})[0]
    return {"y": y.reshape(-1).tolist(), "model": str(model.tag)}
