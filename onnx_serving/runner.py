"""The model runner: the one place that owns ONNX Runtime sessions.

It opens models that model_store.get_verified found in the BentoML store (their
SHA-256 checked), warms each session up, and runs float32 arrays through it.
Models are kept by tag so that a later version can sit beside the default one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import model_store
from .config import Settings
from .validation import check_width

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

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: float32 [rows, features] -> float32 [rows, outputs] (or [rows])."""
        # JSON requests were checked on arrival; files and binary bodies meet the rule here.
        check_width(x, self.n_features)
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

    def load(self, stored: Any) -> LoadedModel:
        """Open a stored bentoml Model that `model_store.get_verified` returned, and warm it up."""
        import onnxruntime as ort

        tag = str(stored.tag)
        path = stored.path_of(model_store.ONNX_FILENAME)
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
            "sha256": stored.info.metadata["sha256"],
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
        logger.info("Loaded %s (sha256 %s) from %s", tag, info["sha256"], path)
        return model

    @property
    def default(self) -> LoadedModel:
        if self.default_tag is None:
            raise RuntimeError("no model loaded")
        return self.models[self.default_tag]
