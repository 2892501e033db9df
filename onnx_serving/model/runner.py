"""The model runner: the one place that owns ONNX Runtime sessions.

It opens models that store.get_verified found in the BentoML store (their SHA-256
checked), warms each session up, and runs checked `Feeds` through it. Models are kept by
tag so that a later version can sit beside the default one.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_serving.errors import ServingError
from onnx_serving.model.feeds import Feeds
from onnx_serving.model.layout import ONNX_FILENAME
from onnx_serving.model.signature import Signature, example_feeds, is_static

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnx_serving.config import Settings

logger = logging.getLogger("onnx_serving")


# ONNX Runtime's errors while running a request that passed every check: the model passed
# its trial run at load, so these are caused by the input (an index out of its table, shapes
# that don't broadcast...) and answered 400 with the runtime's message, as Triton does.
_INPUT_ERRORS = ("InvalidArgument", "Fail", "RuntimeException", "NotImplemented")
_ALLOCATION = ("allocat", "bad_alloc", "out of memory", "size overflowed")
# The runtime's source position and C++ signature, and its error-code prefix: not the caller's.
_NOISE = re.compile(r"/onnxruntime_src/\S+:\d+ [^\[]*?\)\s*|\[ONNXRuntimeError\] : \d+ : \w+ : ")


def model_error(exc: Exception, max_output_bytes: int) -> Exception:
    """What an exception from `session.run` means for the caller: a ServingError (400, or 413
    when the run needed more memory than it could have), else the exception itself."""
    text = str(exc)
    if isinstance(exc, MemoryError) or any(a in text.lower() for a in _ALLOCATION):
        return ServingError(
            "the model could not allocate its outputs for this input (at most "
            f"MAX_OUTPUT_BYTES={max_output_bytes:,} bytes are answered): send fewer rows",
            status=413,
            reason="output_too_large",
        )
    if type(exc).__name__ in _INPUT_ERRORS:
        text = _NOISE.sub("", text.split("Status Message: ", 1)[-1]).strip()
        return ServingError(
            f"the model could not run on this input: {text[:400]}", reason="model_rejected"
        )
    return exc


@dataclass
class LoadedModel:
    tag: str
    session: ort.InferenceSession
    signature: Signature
    info: dict[str, Any]
    max_output_bytes: int = 64 << 20
    # Per output: its item size and dimensions (int, or (input, axis) whose size it takes);
    # None where a size is known only once the model has run.
    _output_plan: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._output_plan = _output_plan(self.signature)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Checked inputs -> output name -> array, one row per input row. Outputs past
        MAX_OUTPUT_BYTES are refused (413): before running where their shapes follow from
        the inputs', and after running in any case (before they are encoded)."""
        sig = self.signature
        if self._output_plan is not None:
            self._check_output_bytes(_planned_bytes(self._output_plan, feeds.arrays))
        if sig.batch == "static" and feeds.rows != sig.batch_size:
            outputs = self._run_in_slices(feeds, sig.batch_size)
        else:
            outputs = self._run_once(feeds.arrays)
        # Always, also after a plan: a plan's batch dimension is a guess for unnamed ones.
        self._check_output_bytes(sum(v.nbytes for v in outputs.values()))
        return outputs

    def _check_output_bytes(self, nbytes: int) -> None:
        if nbytes > self.max_output_bytes:
            raise ServingError(
                f"the outputs for this input take {nbytes:,} bytes; at most "
                f"MAX_OUTPUT_BYTES={self.max_output_bytes:,}: send fewer rows",
                status=413,
                reason="output_too_large",
            )

    def _run_once(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            raw = self.session.run(None, arrays)
        except Exception as exc:
            raise model_error(exc, self.max_output_bytes) from None
        out = {}
        for spec, value in zip(self.signature.outputs, raw, strict=True):
            if spec.is_zipmap:
                # [{class: probability}, ...] per row -> [rows, classes], in the classes' order.
                keys = self.signature.zipmap_keys or self.signature.classes
                value = np.array([[row[c] for c in keys] for row in value], dtype=np.float32)
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


def _output_plan(sig: Signature) -> list | None:
    """How to size each output from the inputs' shapes, if every dimension can be."""
    bound: dict[str, tuple[str, int]] = {}
    for spec in sig.inputs:
        for axis, dim in enumerate(spec.shape):
            if not is_static(dim) and dim != "?":
                bound.setdefault(dim, (spec.name, axis))
    plan = []
    for spec in sig.outputs:
        if spec.dtype.kind == "O" or spec.is_zipmap:
            return None
        dims: list[Any] = []
        for axis, dim in enumerate(spec.shape):
            if is_static(dim):
                dims.append(dim)
            elif dim in bound:
                dims.append(bound[dim])
            elif axis == 0 and sig.batch != "none" and sig.inputs and sig.inputs[0].rank:
                dims.append((sig.inputs[0].name, 0))  # the rows, as the batch dimension
            else:
                return None
        plan.append((spec.dtype.itemsize, dims))
    return plan


def _planned_bytes(plan: list, arrays: dict[str, np.ndarray]) -> int:
    return sum(
        size * math.prod(d if isinstance(d, int) else arrays[d[0]].shape[d[1]] for d in dims)
        for size, dims in plan
    )


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
    if settings is not None:
        # Serving: every run's memory (outputs, intermediates) comes from one arena per worker,
        # capped at ORT_ARENA_MAX_BYTES: a run that would need more fails (413) instead of
        # taking the machine's memory, and the arena never grows past it. The weights are
        # allocated apart, so the cap is for requests alone. A failed run is the caller's:
        # its 413 is the one log line (the runtime's own ERROR line is off).
        _shared_arena(settings.ort_arena_max_bytes)
        opts.add_session_config_entry("session.use_env_allocators", "1")
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        opts.log_severity_level = 4
    return opts


_ARENA: list[int] = []


def _shared_arena(max_bytes: int) -> None:
    """Register the process's capped CPU arena with ONNX Runtime (once per process)."""
    import onnxruntime as ort

    if _ARENA:
        return
    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    # -1: ONNX Runtime's defaults for the extend strategy, first chunk and dead bytes.
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(max_bytes, -1, -1, -1))
    _ARENA.append(max_bytes)


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
        """Open a stored bentoml Model that `store.get_verified` returned, with the
        signature `store.signature_of` read for it, and warm it up."""
        import onnxruntime as ort

        tag = str(stored.tag)
        path = stored.path_of(ONNX_FILENAME)
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
        model = LoadedModel(
            tag=tag,
            session=session,
            signature=signature,
            info=info,
            max_output_bytes=self.settings.max_output_bytes,
        )
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
