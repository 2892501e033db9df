"""Settings, read once from the environment when the service starts (pydantic-settings).

Every knob the service has is a field here, typed and validated, with its default; its
environment variable is the field's name in capitals unless an alias says otherwise. The
README's configuration tables are checked against this class (tests/unit/test_project.py).
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "linear-2x"
MIB = 1 << 20
# JSON spends at most this many bytes on one value in any request a client should send
# ("-1.2345678901234567e-123, " is 26); a body past MAX_VALUES of them is refused unread.
JSON_BYTES_PER_VALUE = 26


def env(name: str) -> AliasChoices:
    """An environment variable whose name is not the field's."""
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Which model to serve: a full tag wins over a name (which means "its latest version").
    model_name: str = DEFAULT_MODEL_NAME
    model_tag: str | None = None
    # Several versions side by side (onnx_serving/versions/router.py): the served set, and a
    # file with the routing between them (default, canary, shadow), reloaded when it changes.
    model_tags: str = ""
    routing_file: Path | None = None
    # Signed models (onnx_serving/model/signing.py): public keys or CA certificates (PEM),
    # comma-separated; each served version must be signed by one of them. Unset: the SHA-256
    # recorded at import is the check, as before.
    model_verify_key: str = ""
    # Largest number of values (rows x features) one JSON request may carry.
    max_values: int = Field(1_000_000, gt=0)
    # Rows per chunk when /predict_file streams a large file through the model.
    file_chunk_rows: int = Field(262_144, gt=0)
    # ONNX Runtime threads per session; 1 suits tiny models and several workers.
    ort_intra_op_threads: int = Field(1, gt=0)
    ort_inter_op_threads: int = Field(1, gt=0)
    # Adaptive batching for /predict_batched; None: the settings measured for the model at
    # import (onnx_serving/model/batching.py).
    batch_max_size: int | None = Field(None, ge=2)
    batch_max_latency_ms: int | None = Field(None, gt=0)
    # HTTP worker processes of `bentoml serve` (each holds its own sessions): a number, or
    # "cpu_count", BentoML's own: one per core the machine (or container) has.
    workers: int | Literal["cpu_count"] = "cpu_count"
    # BentoML's per-request access log line and OpenTelemetry spans for prediction routes:
    # together more than half of a small request's CPU (README, Performance), so off unless
    # asked for. Errors are logged and /metrics counts every request either way.
    access_log: bool = False
    trace_predictions: bool = False
    # Request bodies, in bytes, checked from Content-Length before a byte is read and
    # counted while a body without one streams in (413 past them). None: from MAX_VALUES.
    max_json_bytes: int | None = Field(None, gt=0)
    max_binary_bytes: int | None = Field(None, gt=0)
    max_file_bytes: int = Field(1024 * MIB, gt=0)
    max_image_bytes: int = Field(20 * MIB, gt=0)
    # Overload: the queueing a worker aims for, and the bounds of how many prediction
    # requests it admits at once; past them it refuses with 503 + Retry-After (admission.py).
    max_queue_ms: int = Field(25, gt=0)
    min_in_flight: int = Field(16, gt=0)
    max_in_flight: int = Field(256, gt=0)
    retry_after_s: int = Field(1, gt=0)
    # SIGTERM: keep serving (Connection: close, /readyz 503) this long, then stop listening
    # and give open connections this long to get their last answer (_patches/uvicorn_drain.py).
    drain_seconds: float = Field(1.0, ge=0)
    drain_close_grace_s: float = Field(3.0, ge=0)
    # Connections that don't send their headers (or a body stalls) this long get a 408.
    http_header_timeout_s: float = Field(10.0, ge=0, validation_alias=env("HTTP_HEADER_TIMEOUT"))
    http_body_timeout_s: float = Field(30.0, ge=0, validation_alias=env("HTTP_BODY_TIMEOUT"))
    # A request body must arrive at least this fast (bytes a second, over 4 s windows) or the
    # connection gets a 408: slow clients can't hold connections or slots. 0: off.
    http_body_min_rate: int = Field(16_384, ge=0)
    # The request line and headers together, and the number of headers (431 past either).
    http_max_header_bytes: int = Field(65_536, ge=1024)
    http_max_headers: int = Field(100, ge=8)
    # The largest tensor rank a request may send, and the most bytes a model's outputs may
    # take for one request (413 before running where the shapes are known, else after).
    max_rank: int = Field(16, ge=1, le=32)
    max_output_bytes: int = Field(64 * MIB, gt=0)
    # ONNX Runtime's memory for runs (outputs and intermediates), per worker: a run that needs
    # more is refused with 413, and the arena never holds more (runner.session_options).
    ort_arena_max_bytes: int = Field(2048 * MIB, ge=64 * MIB)
    # The longest CSV line /predict_file reads (the header included).
    max_csv_line_bytes: int = Field(1 * MIB, ge=1024)
    # Images: the most pixels a PNG or JPEG may have (decoded off the event loop).
    max_image_pixels: int = Field(50_000_000, gt=0)
    # API keys: the keys themselves (comma-separated), their SHA-256 digests, or a file of
    # keys, one per line. None set: no authentication. Never logged, never in repr.
    api_key: SecretStr | None = None
    api_key_sha256: SecretStr | None = None
    api_key_file: Path | None = None
    # The Open Inference Protocol over gRPC (onnx_serving/protocols/grpc_server.py), served by
    # every worker on this port beside HTTP; 0: no gRPC. Triton's port by default. Server
    # reflection (for grpcurl and the like) only when asked for.
    grpc_port: int = Field(8001, ge=0, le=65535)
    grpc_host: str = "0.0.0.0"
    grpc_reflection: bool = False

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"MIN_IN_FLIGHT ({self.min_in_flight}) must not exceed MAX_IN_FLIGHT "
                f"({self.max_in_flight})"
            )
        self.api_key_hashes  # noqa: B018  (reads the key file: a bad one fails at start)
        for path in self.verify_keys:
            if not path.is_file():
                raise ValueError(f"MODEL_VERIFY_KEY: no such file: {path}")
        return self

    @property
    def verify_keys(self) -> list[Path]:
        """The trusted keys or certificates of MODEL_VERIFY_KEY; empty: no signature asked."""
        return [Path(p.strip()) for p in self.model_verify_key.split(",") if p.strip()]

    @property
    def json_limit(self) -> int:
        return self.max_json_bytes or JSON_BYTES_PER_VALUE * self.max_values + MIB

    @property
    def binary_limit(self) -> int:
        # 8 bytes: the widest numeric type (float64, int64) per value.
        return self.max_binary_bytes or 8 * self.max_values + MIB

    @property
    def model_ref(self) -> str:
        return self.model_tag or f"{self.model_name}:latest"

    @functools.cached_property
    def api_key_hashes(self) -> tuple[str, ...]:
        """SHA-256 hex digests of the accepted API keys; empty: no authentication."""
        keys = [k.strip() for k in _secret(self.api_key).split(",") if k.strip()]
        if self.api_key_file:
            try:
                text = self.api_key_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"API_KEY_FILE: {exc.strerror}: {self.api_key_file}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip()]
        hashes = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
        for digest in _secret(self.api_key_sha256).split(","):
            digest = digest.strip().lower()
            if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("API_KEY_SHA256 must be SHA-256 hex digests, comma-separated")
            if digest:
                hashes.append(digest)
        return tuple(hashes)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value else ""


class SettingsError(SystemExit):
    """A setting the service can't start with: the process stops with one line naming the
    variable, not a traceback (settings are read as the service's modules load, before any
    handler of ours could catch it)."""


@functools.cache
def settings() -> Settings:
    """The process's settings; read from the environment on first use only."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("error: invalid settings: " + "; ".join(problems)) from None
