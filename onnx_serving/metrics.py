"""The service's own Prometheus metrics, beside BentoML's, on the same /metrics.

Made with `bentoml.metrics`, BentoML's wrappers of prometheus_client, so that they join its
multiprocess registry: every worker's counts add up on /metrics. Labels are low-cardinality
only (model versions served, endpoints, fixed reasons). README, Metrics, lists them all.
"""

from __future__ import annotations

import re

import bentoml

PREDICTIONS = bentoml.metrics.Counter(
    name="onnx_predictions",
    documentation="Predictions answered, by model version (tag), endpoint and how the "
    "version was chosen (default, canary, explicit)",
    labelnames=["version", "endpoint", "route"],
)
ROWS = bentoml.metrics.Counter(
    name="onnx_prediction_rows",
    documentation="Rows predicted, by model version and endpoint",
    labelnames=["version", "endpoint"],
)
REJECTIONS = bentoml.metrics.Counter(
    name="onnx_input_rejections",
    documentation="Requests refused for their input, by reason: json, schema, shape, range, "
    "size, media_type, body_too_large, unauthorized, timeout, version",
    labelnames=["reason"],
)
SHED = bentoml.metrics.Counter(
    name="onnx_requests_shed",
    documentation="Prediction requests refused with 503 because the worker was overloaded "
    "(admission control, before BentoML saw them)",
)
SHADOW_DIFF = bentoml.metrics.Histogram(
    name="onnx_shadow_max_abs_diff",
    documentation="Largest absolute difference between the shadow version's outputs and the "
    "answering version's, per shadowed request",
    labelnames=["version"],
    buckets=(0.0, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, float("inf")),
)
SHADOW_SKIPPED = bentoml.metrics.Counter(
    name="onnx_shadow_skipped",
    documentation="Requests not shadowed because the shadow was still busy with earlier ones",
)

# An input error's message -> its reason label. One place, so labels stay few.
_REASONS = [
    ("size", r"too many (values|rows)|larger than"),
    ("range", r"not a finite|out of range"),
    ("shape", r"ragged|dimension|shape|feature|empty|same number of rows|static batch"),
    ("json", r"invalid json|json_invalid|EOF while parsing|expected value"),
]


def reason_of(message: str) -> str:
    for reason, pattern in _REASONS:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    return "schema"
