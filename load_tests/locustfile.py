"""Locust users for the ONNX BentoML service.

Pick users the Locust way: class names at the end of the command line (or LOCUST_USER_CLASSES),
`--class-picker` in the web UI, `-u/-r/-t` for users, spawn rate and run time. Examples:

    locust -f load_tests/locustfile.py -H http://127.0.0.1:3000 --headless -u 20 -t 30s MixedUser
    locust -f load_tests/locustfile.py,load_tests/step_ramp.py -H ... --headless RealtimeUser
    GRPC_TARGET=127.0.0.1:8001 locust -f load_tests/locustfile.py -H ... --headless GrpcUser

Targets (`--p95-ms`, `--p99-ms`, `--min-rps`, `--max-fail-ratio`, `--user-rps`) are defined in
targets.py; a run that misses one exits non-zero.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import grpc
import grpc.experimental.gevent
import numpy as np
from locust import FastHttpUser, User, task
from locust.contrib.fasthttp import ResponseContextManager
from payloads import (
    JSON_HEADERS,
    CsvFile,
    JsonBatch,
    check_json_body,
    check_metadata,
    random_values,
)
from targets import paced

# gRPC's blocking calls yield to Locust's other users (gevent), as Locust's gRPC example does.
grpc.experimental.gevent.init_gevent()

REFUSED = "/predict [refused]"  # the name load_tests/overload.py reads refusals by

# Built once per process: the load generator should spend its CPU on requests, not on payloads.
BATCH_1K = JsonBatch(1_000)
BATCH_100K = JsonBatch(100_000)
CSV_1K = CsvFile(1_000)


def _verdict(resp: ResponseContextManager, problem: str | None) -> None:
    if resp.status_code < 200 or resp.status_code >= 300:
        resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:120]}")
    elif problem:
        resp.failure(problem)
    else:
        resp.success()


class ServiceUser(FastHttpUser):
    """Shared request helpers; not run by itself."""

    abstract = True
    wait_time = paced
    # Large batches take a while; a hung request still has to end within the run.
    network_timeout = 60.0

    def predict_values(self, path: str, name: str | None = None) -> None:
        x = random_values(1)
        with self.client.post(path, json={"x": x}, name=name or path, catch_response=True) as resp:
            _verdict(resp, check_json_body(resp.content, x) if resp.ok else None)

    def predict_batch(self, batch: JsonBatch, name: str) -> None:
        with self.client.post(
            "/predict", data=batch.body, headers=JSON_HEADERS, name=name, catch_response=True
        ) as resp:
            _verdict(resp, check_json_body(resp.content, batch.x) if resp.ok else None)

    def predict_file(self, upload: CsvFile, name: str) -> None:
        files = {"file": ("data.csv", upload.content, "text/csv")}
        with self.client.post("/predict_file", files=files, name=name, catch_response=True) as resp:
            _verdict(resp, upload.check(resp.content) if resp.ok else None)


class RealtimeUser(ServiceUser):
    """The real-time API: one value per request to /predict."""

    @task
    def predict_one(self) -> None:
        self.predict_values("/predict")


class BatchedUser(ServiceUser):
    """The adaptively batched API: one value per request; run many of them so batches form."""

    @task
    def predict_one_batched(self) -> None:
        self.predict_values("/predict_batched")


class LargeBatchUser(ServiceUser):
    """Large batches to /predict: 1,000 values often, 100,000 values now and then."""

    @task(10)
    def predict_1k(self) -> None:
        self.predict_batch(BATCH_1K, "/predict [1k values]")

    @task(1)
    def predict_100k(self) -> None:
        self.predict_batch(BATCH_100K, "/predict [100k values]")


class FileUser(ServiceUser):
    """The file API: a 1,000-row CSV to /predict_file."""

    @task
    def predict_csv(self) -> None:
        self.predict_file(CSV_1K, "/predict_file [1k-row CSV]")


def overload_wait(user: Any) -> float:
    """Back to back while the overload shape overloads, except after a refusal: then wait what
    its Retry-After asks (plus jitter), as a well-behaved client does. At --user-rps once it
    calms down."""
    shape = user.environment.shape_class
    if shape is not None and hasattr(shape, "phase") and shape.phase() != "overload":
        return paced(user)
    return max(0.0, user.retry_at - time.monotonic())


class OverloadUser(ServiceUser):
    """For SHAPE=overload (load_tests/overload.py): /predict, one value. A 503 that carries
    Retry-After and a JSON reason is the service shedding load as designed: counted as
    "/predict [refused]", not as a failure; any other error fails."""

    wait_time = overload_wait
    retry_at = 0.0

    @task
    def predict_one(self) -> None:
        x = random_values(1)
        with self.client.post("/predict", json={"x": x}, catch_response=True) as resp:
            if resp.status_code != 503:
                _verdict(resp, check_json_body(resp.content, x) if resp.ok else None)
                return
            resp.request_meta["name"] = REFUSED
            retry_after = resp.headers.get("Retry-After", "")
            if retry_after.isdigit() and b'"error"' in (resp.content or b""):
                # Jitter, as well-behaved clients add: refused together, back not together.
                self.retry_at = time.monotonic() + int(retry_after) * random.uniform(1.0, 1.5)
                resp.success()
            else:
                resp.failure("503 without Retry-After or a JSON reason")


class MixedUser(ServiceUser):
    """A realistic mix: mostly single values, some through batching, a few batches and files."""

    @task(70)
    def predict_one(self) -> None:
        self.predict_values("/predict")

    @task(20)
    def predict_one_batched(self) -> None:
        self.predict_values("/predict_batched")

    @task(8)
    def predict_1k(self) -> None:
        self.predict_batch(BATCH_1K, "/predict [1k values]")

    @task(2)
    def predict_csv(self) -> None:
        self.predict_file(CSV_1K, "/predict_file [1k-row CSV]")

    @task(1)
    def metadata(self) -> None:
        with self.client.get("/metadata", catch_response=True) as resp:
            _verdict(resp, check_metadata(resp.content) if resp.ok else None)


class GrpcUser(User):
    """The Open Inference Protocol over gRPC (tritonclient's own stubs): one value per
    ModelInfer call as raw contents, each answer checked, to GRPC_TARGET (host:port; run.sh
    sets it). Its calls join Locust's statistics and the same targets as "gRPC ModelInfer"."""

    wait_time = paced

    def on_start(self) -> None:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.channel = grpc.insecure_channel(os.environ.get("GRPC_TARGET", "127.0.0.1:8001"))
        self.infer = service_pb2_grpc.GRPCInferenceServiceStub(self.channel).ModelInfer
        self.request = service_pb2.ModelInferRequest
        self.model = os.environ.get("MODEL_NAME", "linear-2x")

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def model_infer(self) -> None:
        x = np.array(random_values(1), dtype="<f4")
        request = self.request(model_name=self.model)
        request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
        request.raw_input_contents.append(x.tobytes())
        started, problem, size = time.perf_counter(), None, 0
        try:
            response = self.infer(request, timeout=30)
            size = response.ByteSize()
            y = np.frombuffer(response.raw_output_contents[0], "<f4")
            if not np.allclose(y, 2 * x):
                problem = AssertionError(f"wrong answer: {y.tolist()} for {x.tolist()}")
        except grpc.RpcError as exc:
            problem = exc
        self.environment.events.request.fire(
            request_type="gRPC",
            name="ModelInfer",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=problem,
            context={},
        )
