"""The model runner: the one place that owns ONNX Runtime sessions.

It loads models from the BentoML store by tag, checks each file's SHA-256 against
the stored metadata, warms the session up, and runs float32 arrays through it.
Models are kept by tag so that a later version can sit beside the default one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import model_store
from .config import Settings
from .validation import InvalidInput

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger("onnx_serving")


@dataclass
class LoadedModel:
    tag: str
    session: ort.InferenceSession
    input_name: str
    input_rank: int  # 1: the model takes [rows]; 2: [rows, features]
    n_features: int | None
    info: dict[str, Any]

    def check_width(self, x: np.ndarray) -> None:
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise InvalidInput(
                f"the model takes {self.n_features} feature(s) per row, got {x.shape[1]}"
            )

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [rows, features] -> float32 [rows, outputs] (or [rows])."""
        self.check_width(x)
        if self.input_rank == 1:
            x = x.reshape(-1)
        return self.session.run(None, {self.input_name: x})[0]


def session_options(settings: Settings) -> ort.SessionOptions:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Tiny models: a thread pool costs more than it saves, and each worker has its own session.
    opts.intra_op_num_threads = settings.ort_intra_op_threads
    opts.inter_op_num_threads = settings.ort_inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads spin between calls by default; on a shared 2-core box that steals CPU from HTTP.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class ModelRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.default_tag: str | None = None

    def load(self, ref: str) -> LoadedModel:
        """Load NAME:VERSION (or NAME:latest) from the store, verify it and warm it up."""
        import bentoml
        import onnxruntime as ort

        stored = bentoml.models.get(ref)
        tag = str(stored.tag)
        path, actual = model_store.verified_path(stored)
        session = ort.InferenceSession(
            path, sess_options=session_options(self.settings), providers=["CPUExecutionProvider"]
        )
        signature = stored.info.metadata["signature"]
        info = {
            "tag": tag,
            "name": stored.tag.name,
            "version": stored.tag.version,
            "created_at": stored.info.creation_time.isoformat(),
            "labels": dict(stored.info.labels),
            "sha256": actual,
            "signature": signature,
            "metrics": stored.info.metadata.get("metrics"),
            "metadata": dict(stored.info.metadata),
        }
        model = LoadedModel(
            tag=tag,
            session=session,
            input_name=session.get_inputs()[0].name,
            input_rank=len(signature["inputs"][0]["shape"]),
            n_features=signature.get("n_features"),
            info=info,
        )
        # Warm-up: the first run allocates buffers; do it before /readyz says yes.
        model.run(np.zeros((8, model.n_features or 1), dtype=np.float32))
        self.models[tag] = model
        if self.default_tag is None:
            self.default_tag = tag
        logger.info("Loaded %s (sha256 %s) from %s", tag, actual, path)
        return model

    @property
    def default(self) -> LoadedModel:
        if self.default_tag is None:
            raise RuntimeError("no model loaded")
        return self.models[self.default_tag]
