"""The service's own Prometheus metrics, beside BentoML's, on the same /metrics.

Made with `bentoml.metrics`, BentoML's wrappers of prometheus_client, so that they join its
multiprocess registry: every worker's counts add up on /metrics. Labels are low-cardinality
only (model versions served, endpoints, fixed reasons). README, Metrics, lists them all.
"""

from __future__ import annotations

import bentoml

PREDICTIONS = bentoml.metrics.Counter(
    name="onnx_predictions",
    documentation="Predictions answered, by model version (tag), endpoint, how the "
    "version was chosen (default, canary, explicit) and protocol (http, grpc)",
    labelnames=["version", "endpoint", "route", "protocol"],
)
ROWS = bentoml.metrics.Counter(
    name="onnx_prediction_rows",
    documentation="Rows predicted, by model version, endpoint and protocol",
    labelnames=["version", "endpoint", "protocol"],
)
REJECTIONS = bentoml.metrics.Counter(
    name="onnx_input_rejections",
    documentation="Requests refused with a 4xx (or its gRPC status), by reason "
    "(onnx_serving/errors.py REASONS) and protocol",
    labelnames=["reason", "protocol"],
)
SHED = bentoml.metrics.Counter(
    name="onnx_requests_shed",
    documentation="Prediction requests refused with 503 (gRPC: RESOURCE_EXHAUSTED) because "
    "the worker was overloaded (admission control, before BentoML saw them)",
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
ROUTING_RELOAD_FAILURES = bentoml.metrics.Counter(
    name="onnx_routing_reload_failures",
    documentation="Changes of ROUTING_FILE that could not be applied (the routing in force kept)",
)
SLOW_BODIES = bentoml.metrics.Counter(
    name="onnx_slow_bodies",
    documentation="Connections closed with 408 because a request body arrived slower than "
    "HTTP_BODY_MIN_RATE or stalled for HTTP_BODY_TIMEOUT; gRPC calls ended with "
    "DEADLINE_EXCEEDED because their message was not whole within HTTP_BODY_TIMEOUT",
)
# Saturation, sampled by the admission ticker (not per request): what each worker holds.
IN_FLIGHT = bentoml.metrics.Gauge(
    name="onnx_requests_in_flight",
    documentation="Prediction requests admitted and not yet answered, per worker",
    multiprocess_mode="livesum",
)
RECEIVING = bentoml.metrics.Gauge(
    name="onnx_bodies_receiving",
    documentation="Requests whose body is still arriving (not admitted yet), per worker",
    multiprocess_mode="livesum",
)
ADMISSION_LIMIT = bentoml.metrics.Gauge(
    name="onnx_admission_limit",
    documentation="How many prediction requests the worker admits at once now (MAX_IN_FLIGHT "
    "unless shedding)",
    multiprocess_mode="livemin",
)
GRPC_CALLS = bentoml.metrics.Counter(
    name="onnx_grpc_calls",
    documentation="gRPC calls answered (BentoML's HTTP metrics don't see them), by method and "
    "status code",
    labelnames=["method", "code"],
)
GRPC_DURATION = bentoml.metrics.Histogram(
    name="onnx_grpc_call_duration_seconds",
    documentation="Time from a gRPC call's arrival to its answer, by method",
    labelnames=["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
