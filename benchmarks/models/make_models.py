"""Make the bench models with the exporters users use.

    make bench-models    # with `make venv`'s convert extra (PyTorch, scikit-learn, skl2onnx)

Two models at the two ends of what adaptive batching can do, committed so `make bench`
needs neither PyTorch nor scikit-learn (deterministic: fixed seeds):

- mlp.onnx (PyTorch, torch.onnx.export): 16 dense layers, 64 features -> 15 x 512 -> 10
  scores, dynamic batch. One call's cost is mostly loading 15 MB of weights, whatever
  the rows: one row costs about as much as dozens, so batching should multiply throughput.
- forest.onnx (scikit-learn RandomForestRegressor, 200 trees of depth 8, 16 features,
  through skl2onnx): each row walks every tree, so the cost is mostly per row and batching
  can save little.

The demo model (y = 2x, one feature) is the third: nearly free per call and per row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

OUT = Path(__file__).resolve().parent


def mlp() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, 512), nn.ReLU()]
    for _ in range(14):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    layers.append(nn.Linear(512, 10))
    model = nn.Sequential(*layers).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "mlp.onnx"
        torch.onnx.export(
            model,
            (torch.randn(2, 64),),
            str(path),
            input_names=["features"],
            output_names=["scores"],
            dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        )
        proto = onnx.load(str(path))  # weights inline, even if written beside the file
    onnx.save(proto, str(OUT / "mlp.onnx"))


def forest() -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import make_regression
    from sklearn.ensemble import RandomForestRegressor

    x, y = make_regression(n_samples=5000, n_features=16, noise=0.5, random_state=0)
    x = x.astype(np.float32)
    model = RandomForestRegressor(n_estimators=200, max_depth=8, random_state=0, n_jobs=1)
    model.fit(x, y)
    proto = to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    onnx.save(proto, str(OUT / "forest.onnx"))


if __name__ == "__main__":
    mlp()
    forest()
    for name in ("mlp.onnx", "forest.onnx"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size / 1e6:.1f} MB")
