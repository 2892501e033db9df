"""Models of the shapes users bring, built with onnx.helper (no framework needed), for the
hostile-input tests. Loaded as a plugin by conftest.py:

    token_home      session: a model store holding
                      token-embedding  input_ids int64 [batch, seq] -> pooled [batch, 8]:
                                       a 1,000-word embedding (Gather), mean over seq
                      token-pair       input_ids, attention_mask int64 [batch, seq] ->
                                       pooled [batch, 8]: the masked sum, as a BERT-style
                                       exporter writes it (the two share `seq`)
                      sizer            dims int64 [2] -> zeros float [?, ?]: an output whose
                                       size depends on the input's values (ConstantOfShape)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
VOCAB, WIDTH = 1000, 8


def _model(nodes: list, inputs: list, outputs: list, initializers: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def embedding() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(VOCAB, WIDTH)).astype(np.float32)


def token_embedding() -> bytes:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", WIDTH])
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("ReduceMean", ["vectors"], ["pooled"], axes=[1], keepdims=0),
    ]
    return _model(nodes, [ids], [out], [numpy_helper.from_array(embedding(), "table")])


def token_pair() -> bytes:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", WIDTH])
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(embedding(), "table"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    return _model(nodes, [ids, mask], [out], inits)


def sizer() -> bytes:
    dims = helper.make_tensor_value_info("dims", TensorProto.INT64, [2])
    out = helper.make_tensor_value_info("zeros", TensorProto.FLOAT, [None, None])
    zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
    nodes = [helper.make_node("ConstantOfShape", ["dims"], ["zeros"], value=zero)]
    return _model(nodes, [dims], [out], [])


MODELS = {"token-embedding": token_embedding, "token-pair": token_pair, "sizer": sizer}


@pytest.fixture(scope="session")
def token_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("token_home")
    for name, build in MODELS.items():
        path = home / f"{name}.onnx"
        path.write_bytes(build())
        result = subprocess.run(
            [sys.executable, str(ROOT / "train_and_save.py"), "--onnx", str(path), "--name", name],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    return home
