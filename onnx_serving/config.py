"""Settings, read once from the environment when the service starts.

Every knob the service has lives here with its default, so the README's
configuration table and the code can't drift apart.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field

DEFAULT_MODEL_NAME = "linear-2x"


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value:g}")
    return value


def _bool(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _optional_int(name: str, minimum: int = 1) -> int | None:
    return _int(name, 0, minimum) if os.environ.get(name) else None


def _workers() -> int | str:
    raw = os.environ.get("WORKERS", "").strip()
    return "cpu_count" if raw in ("", "cpu_count") else _int("WORKERS", 1)


MIB = 1 << 20
# JSON spends at most this many bytes on one value in any request a client should send
# ("-1.2345678901234567e-123, " is 26); a body past MAX_VALUES of them is refused unread.
JSON_BYTES_PER_VALUE = 26


def _api_key_hashes() -> tuple[str, ...]:
    """SHA-256 hex digests of the accepted API keys: from API_KEY (the key itself),
    API_KEY_SHA256 (digests, comma-separated) and API_KEY_FILE (one key per line)."""
    keys = [k.strip() for k in os.environ.get("API_KEY", "").split(",") if k.strip()]
    path = os.environ.get("API_KEY_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise ValueError(f"API_KEY_FILE: {exc.strerror}: {path}") from None
    hashes = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    for digest in os.environ.get("API_KEY_SHA256", "").split(","):
        digest = digest.strip().lower()
        if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("API_KEY_SHA256 must be SHA-256 hex digests, comma-separated")
        if digest:
            hashes.append(digest)
    return tuple(hashes)


@dataclass(frozen=True)
class Settings:
    # Which model to serve: a full tag wins over a name (which means "its latest version").
    model_name: str
    model_tag: str | None
    # Largest number of values (rows x features) one JSON request may carry.
    max_values: int
    # Rows per chunk when /predict_file streams a large file through the model.
    file_chunk_rows: int
    # ONNX Runtime threads per session; 1 suits tiny models and several workers.
    ort_intra_op_threads: int
    ort_inter_op_threads: int
    # Adaptive batching for /predict_batched; None: the settings measured for the model at
    # import (onnx_serving/batching.py).
    batch_max_size: int | None
    batch_max_latency_ms: int | None
    # HTTP worker processes of `bentoml serve` (each holds its own session): a number, or
    # "cpu_count", BentoML's own: one per core the machine (or container) has.
    workers: int | str
    # BentoML's per-request access log line and OpenTelemetry spans for prediction routes:
    # together more than half of a small request's CPU (see README, Performance), so off
    # unless asked for. Errors are logged and /metrics counts every request either way.
    access_log: bool
    trace_predictions: bool
    # Request bodies, in bytes, checked from Content-Length before a byte is read and
    # counted while a body without one streams in (413 past them).
    max_json_bytes: int
    max_binary_bytes: int
    max_file_bytes: int
    max_image_bytes: int
    # Overload: the queueing a worker aims for, and the bounds of how many prediction
    # requests it admits at once; past them it refuses with 503 + Retry-After (admission.py).
    max_queue_ms: int
    min_in_flight: int
    max_in_flight: int
    retry_after_s: int
    # SIGTERM: keep serving (Connection: close, /readyz 503) this long, then stop listening
    # and give open connections this long to get their last answer (drain.py).
    drain_seconds: float
    drain_close_grace_s: float
    # Connections that don't send their headers (or a body stalls) this long get a 408.
    http_header_timeout_s: float
    http_body_timeout_s: float
    # SHA-256 digests of the accepted API keys; empty: no authentication. Never the keys.
    api_key_hashes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"MIN_IN_FLIGHT ({self.min_in_flight}) must not exceed MAX_IN_FLIGHT "
                f"({self.max_in_flight})"
            )

    @property
    def model_ref(self) -> str:
        return self.model_tag or f"{self.model_name}:latest"

    @classmethod
    def from_env(cls) -> Settings:
        max_values = _int("MAX_VALUES", 1_000_000)
        return cls(
            model_name=os.environ.get("MODEL_NAME") or DEFAULT_MODEL_NAME,
            model_tag=os.environ.get("MODEL_TAG") or None,
            max_values=max_values,
            file_chunk_rows=_int("FILE_CHUNK_ROWS", 262_144),
            ort_intra_op_threads=_int("ORT_INTRA_OP_THREADS", 1),
            ort_inter_op_threads=_int("ORT_INTER_OP_THREADS", 1),
            batch_max_size=_optional_int("BATCH_MAX_SIZE", minimum=2),
            batch_max_latency_ms=_optional_int("BATCH_MAX_LATENCY_MS"),
            workers=_workers(),
            access_log=_bool("ACCESS_LOG"),
            trace_predictions=_bool("TRACE_PREDICTIONS"),
            max_json_bytes=_int("MAX_JSON_BYTES", JSON_BYTES_PER_VALUE * max_values + MIB),
            # 8 bytes: the widest numeric type (float64, int64) per value.
            max_binary_bytes=_int("MAX_BINARY_BYTES", 8 * max_values + MIB),
            max_file_bytes=_int("MAX_FILE_BYTES", 1024 * MIB),
            max_image_bytes=_int("MAX_IMAGE_BYTES", 20 * MIB),
            max_queue_ms=_int("MAX_QUEUE_MS", 25),
            min_in_flight=_int("MIN_IN_FLIGHT", 16),
            max_in_flight=_int("MAX_IN_FLIGHT", 256),
            retry_after_s=_int("RETRY_AFTER_S", 1),
            drain_seconds=_float("DRAIN_SECONDS", 1.0),
            drain_close_grace_s=_float("DRAIN_CLOSE_GRACE_S", 3.0),
            http_header_timeout_s=_float("HTTP_HEADER_TIMEOUT", 10.0),
            http_body_timeout_s=_float("HTTP_BODY_TIMEOUT", 30.0),
            api_key_hashes=_api_key_hashes(),
        )


@functools.cache
def settings() -> Settings:
    """The process's settings; read from the environment on first use only."""
    return Settings.from_env()
