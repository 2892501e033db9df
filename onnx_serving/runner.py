"""The model runner: the one place that owns ONNX Runtime sessions.

It opens models that model_store.get_verified found in the BentoML store (their SHA-256
checked), warms each session up, and runs checked `Feeds` through it. Models are kept by
tag so that a later version can sit beside the default one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import model_store
from .feeds import Feeds
from .signature import Signature, example_feeds

if TYPE_CHECKING:
    import onnxruntime as ort

    from .config import Settings

logger = logging.getLogger("onnx_serving")


@dataclass
class LoadedModel:
    tag: str
    session: ort.InferenceSession
    signature: Signature
    info: dict[str, Any]

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Checked inputs -> output name -> array, one row per input row."""
        sig = self.signature
        if sig.batch == "static" and feeds.rows != sig.batch_size:
            return self._run_in_slices(feeds, sig.batch_size)
        return self._run_once(feeds.arrays)

    def _run_once(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = self.session.run(None, arrays)
        out = {}
        for spec, value in zip(self.signature.outputs, raw, strict=True):
            if spec.is_zipmap:
                # [{class: probability}, ...] per row -> [rows, classes], in the classes' order.
                classes = self.signature.classes
                value = np.array([[row[c] for c in classes] for row in value], dtype=np.float32)
            out[spec.name] = value
        return out

    def _run_in_slices(self, feeds: Feeds, size: int) -> dict[str, np.ndarray]:
        """A model that takes exactly `size` rows: run slices of that size, the last one
        padded by repeating its last row, and keep only the real rows' outputs."""
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, feeds.rows, size):
            chunk = {k: v[start : start + size] for k, v in feeds.arrays.items()}
            real = len(next(iter(chunk.values())))
            if real < size:
                chunk = {
                    k: np.concatenate([v, np.repeat(v[-1:], size - real, 0)])
                    for k, v in chunk.items()
                }
            parts.append({k: v[:real] for k, v in self._run_once(chunk).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def session_options(settings: Settings | None = None) -> ort.SessionOptions:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Small models: a thread pool costs more than it saves, and each worker has its own session.
    opts.intra_op_num_threads = settings.ort_intra_op_threads if settings else 1
    opts.inter_op_num_threads = settings.ort_inter_op_threads if settings else 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads spin between calls by default; on a shared 2-core box that steals CPU from HTTP.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: optimizer notes are not the user's concern
    return opts


def trial_run(model: LoadedModel) -> None:
    """Run the smallest input the model must take; raise RuntimeError saying why it failed."""
    feeds = example_feeds(model.signature)
    try:
        model.run(Feeds(feeds))
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise RuntimeError(
            f"{model.tag} loads, but fails on the smallest input it declares ({shapes}): {exc}"
        ) from exc


class ModelRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.default_tag: str | None = None

    def load(self, stored: Any, signature: Signature) -> LoadedModel:
        """Open a stored bentoml Model that `model_store.get_verified` returned, with the
        signature `model_store.signature_of` read for it, and warm it up."""
        import onnxruntime as ort

        tag = str(stored.tag)
        path = stored.path_of(model_store.ONNX_FILENAME)
        session = ort.InferenceSession(
            path, sess_options=session_options(self.settings), providers=["CPUExecutionProvider"]
        )
        meta = stored.info.metadata
        info = {
            "tag": tag,
            "name": stored.tag.name,
            "version": stored.tag.version,
            "created_at": stored.info.creation_time.isoformat(),
            "labels": dict(stored.info.labels),
            "sha256": meta["sha256"],
            "file": path,
            "signature": signature.to_metadata(),
            "metrics": meta.get("metrics", {}),
            "metadata": dict(meta),
        }
        model = LoadedModel(tag=tag, session=session, signature=signature, info=info)
        # Warm-up: the first run allocates buffers; do it before /readyz says yes.
        trial_run(model)
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
