"""What a bench run measures, in order: per model, the in-process limit, the service's
/predict and /predict_batched and the FastAPI baseline; then, on the demo model, large
requests, rows against flat values, the binary and V2 routes, a large file, and one worker
against two."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import bodies
from benchmarks.loads import Measure, run_grpc, run_pyclient, run_wrk, tagged_json
from benchmarks.report import Row, http_row
from benchmarks.servers import (
    ALL_CPUS,
    PY,
    ROOT,
    SERVER_CPU,
    Server,
    pin,
    running,
    start_baseline,
    start_bentoml,
)
from benchmarks.targets import DEMO, FOREST, MLP, PAIRED_TARGETS
from harness.local_server import free_port

# The models: name in the store, features per row, what it shows, its committed file.
MODELS = {
    DEMO: (1, "y = 2x: nearly free per call and per row", None),
    MLP: (64, "16 dense layers of 512 (PyTorch): the cost is mostly per call", "mlp.onnx"),
    FOREST: (16, "200 trees of depth 8 (scikit-learn): the cost is mostly per row", "forest.onnx"),
}


# One worker on the server's core; shedding held back (MAX_QUEUE_MS): the bench measures what
# a worker serves at 64 clients, where one worker queues past its 25 ms target and would
# refuse some. Overload is measured by SHAPE=overload make load-test.
BENCH_ENV = {"WORKERS": "1", "MAX_QUEUE_MS": "1000"}
# Alternating rounds of the service against the baseline (Runner.paired).
PAIRED_ROUNDS = 3


@dataclass
class Plan:
    duration: float
    conns: list[int]
    file_rows: int
    smoke: bool
    models: list[str]
    cases: set[str]
    service: str
    service_env: dict[str, str]
    working_dir: Path = ROOT


@dataclass
class Results:
    rows: list[Row]
    limits: dict[str, dict]
    batching: dict[str, dict]
    paired: dict[str, list[float]] = field(default_factory=dict)
    # Per model whose paired target was missed: µs of CPU per request by layer, (service,
    # baseline), sampled right after the rounds (Runner.causes).
    causes: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def import_bench_models(models: list[str]) -> None:
    """Put the committed bench models into the store the bench serves from, once."""
    import bentoml
    from bentoml.exceptions import NotFound

    for name in models:
        file = MODELS[name][2]
        if file is None:
            continue
        try:
            bentoml.models.get(name)
        except NotFound:
            path = ROOT / "benchmarks" / "models" / file
            cmd = [PY, str(ROOT / "train_and_save.py"), "--onnx", str(path), "--name", name]
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)


def run_limit(model: str, duration: float, body_paths: list[Path]) -> dict:
    seconds = max(0.3, min(1.5, duration / 4))
    cmd = [*pin({SERVER_CPU}), PY, "-m", "benchmarks.limit", model, str(seconds)]
    out = subprocess.run(
        [*cmd, *map(str, body_paths)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    limit = tagged_json(out.stdout, "LIMIT_JSON")
    limit["json"] = {j["body"]: j for j in limit["json"]}
    return limit


def metadata(server: Server) -> dict:
    with urllib.request.urlopen(server.url + "/metadata", timeout=10) as r:
        return json.loads(r.read())


class Runner:
    """Runs cases against servers and collects their rows."""

    def __init__(self, plan: Plan, tmp: Path, log_dir: Path, servers: list[Server]) -> None:
        self.plan, self.tmp, self.log_dir, self.servers = plan, tmp, log_dir, servers
        self.results = Results(rows=[], limits={}, batching={})

    def wrk(
        self, srv: Server, model: str, case: str, path: str, body: Path, conns: int, **kw: Any
    ) -> Row:
        rows, features = kw.pop("rows", 1), kw.pop("features", 1)
        res, m = run_wrk(srv, path, body, conns, self.plan.duration, **kw)
        row = http_row(model, case, "wrk", conns, rows, features, {**res, "body": body.name}, m)
        return self._add(row)

    def py(self, srv: Server, model: str, case: str, path: str, body: Path, features: int) -> Row:
        res, m = run_pyclient(srv, path, body, 1, self.plan.duration)
        row = http_row(model, case, "python", 1, 1, features, {**res, "body": body.name}, m)
        return self._add(row)

    def _add(self, row: Row) -> Row:
        self.results.rows.append(row)
        print(
            f"  {row.model} {row.case} c={row.conns} ({row.tool}): {row.rows_per_s:,.0f} rows/s "
            f"p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms, {row.refused} 503s",
            flush=True,
        )
        return row

    # --- per model ------------------------------------------------------------------------

    def model(self, model: str) -> None:
        plan, d = self.plan, self.plan.duration
        features = MODELS[model][0]
        one = bodies.json_body(self.tmp, 1, features)
        extra = [bodies.json_body(self.tmp, 1000, features)] if not plan.smoke else []
        if model == DEMO and not plan.smoke:
            extra.append(bodies.json_body(self.tmp, 1000, 1, flat=True))
        if "limit" in plan.cases:
            self.results.limits[model] = run_limit(model, d, [one, *extra])
        env = {**BENCH_ENV, **plan.service_env, "MODEL_NAME": model}
        if model == DEMO:  # gRPC beside REST (Runner.protocols)
            self.grpc_port = free_port()
            env["GRPC_PORT"] = str(self.grpc_port)
        srv = start_bentoml(
            f"bentoml-{model}", self.log_dir, {SERVER_CPU}, env, plan.service, plan.working_dir
        )
        with running(self.servers, srv):
            self.results.batching[model] = metadata(srv).get("batching", {})
            for path in ("/predict", "/predict_batched"):
                for c in plan.conns:
                    self.wrk(srv, model, path, path, one, c, features=features)
                if "pyclient" in plan.cases:
                    self.py(srv, model, path, path, one, features)
            if not plan.smoke:
                self.wrk(srv, model, "/predict, rows", "/predict", extra[0], 16, rows=1000,
                         features=features)  # fmt: skip
            if model == DEMO:
                self.demo_extras(srv)
            if "baseline" in plan.cases:
                base = start_baseline(f"baseline-{model}", self.log_dir, model, [])
                with running(self.servers, base):
                    for c in plan.conns:
                        self.wrk(base, model, "baseline FastAPI", "/predict", one, c,
                                 features=features)  # fmt: skip
                    self.paired(srv, base, model, one, features)

    def paired(self, srv: Server, base: Server, model: str, body: Path, features: int) -> None:
        """The service's /predict against the baseline's at 16 clients, in alternating rounds
        (service, baseline, service, ...): the machine's moods fall on both, and each round
        gives one ratio. The median and the spread judge the targets."""
        rounds = 1 if self.plan.smoke else PAIRED_ROUNDS
        ratios = []
        for _ in range(rounds):
            ours = self.wrk(srv, model, "/predict, paired", "/predict", body, 16,
                            features=features)  # fmt: skip
            theirs = self.wrk(base, model, "baseline FastAPI, paired", "/predict", body, 16,
                              features=features)  # fmt: skip
            ratios.append(ours.rps / theirs.rps if theirs.rps else 0.0)
        self.results.paired[model] = ratios
        want = PAIRED_TARGETS.get(model)
        if want and statistics.median(ratios) < want and not self.plan.smoke:
            self.causes(srv, base, model, body)
        print(
            f"  {model} /predict c=16 against the baseline, {rounds} alternating round(s): "
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
            flush=True,
        )

    def causes(self, srv: Server, base: Server, model: str, body: Path) -> None:
        """A missed target's cause, layer by layer: both servers profiled under the same load
        as the rounds (benchmarks/profile.py, py-spy), each layer's µs of CPU per request."""
        from benchmarks.profile import profile

        (worker,) = srv.workers()
        seconds = max(4.0, self.plan.duration)
        ours = profile(srv, worker.pid, body, seconds, self.tmp / f"{model}-service.raw")
        theirs = profile(base, base.proc.pid, body, seconds, self.tmp / f"{model}-base.raw")
        layers = set(ours["layers"]) | set(theirs["layers"])
        self.results.causes[model] = {
            name: (
                ours["layers"].get(name, {}).get("us", 0.0),
                theirs["layers"].get(name, {}).get("us", 0.0),
            )
            for name in layers
        }
        print(f"  {model}: profiled both, {ours['cpu_us_per_request']:.0f} against "
              f"{theirs['cpu_us_per_request']:.0f} µs CPU/request", flush=True)  # fmt: skip

    # --- the demo model: large requests, binary, V2, files --------------------------------

    def demo_extras(self, srv: Server) -> None:
        plan = self.plan
        if not plan.smoke:
            flat = bodies.json_body(self.tmp, 1000, 1, flat=True)
            for path in ("/predict", "/predict_batched"):
                self.wrk(srv, DEMO, path, path, flat, 16, rows=1000)
            raw = bodies.binary_body(self.tmp, 1000)
            octets = "application/octet-stream"
            self.wrk(srv, DEMO, "/predict_binary", "/predict_binary", raw, 16, rows=1000,
                     content_type=octets)  # fmt: skip
        self.protocols(srv)
        if "file" in plan.cases:
            self._add_file(srv)

    def protocols(self, srv: Server) -> None:
        """The Open Inference Protocol three ways, 16 calls in flight, 1 and 1,000 values a
        call: REST with JSON tensors, REST with binary tensors (wrk), and gRPC with raw
        contents (grpc_client.py, one HTTP/2 connection)."""
        octets, infer = "application/octet-stream", f"/v2/models/{DEMO}/infer"
        for n in (1,) if self.plan.smoke else (1, 1000):
            self.wrk(srv, DEMO, "V2 infer, JSON", infer, bodies.v2_json_body(self.tmp, n), 16,
                     rows=n)  # fmt: skip
            v2, header = bodies.v2_binary_body(self.tmp, n)
            self.wrk(srv, DEMO, "V2 infer, binary", infer, v2, 16, rows=n, content_type=octets,
                     header=header)  # fmt: skip
            res, m = run_grpc(srv, self.grpc_port, DEMO, n, 16, self.plan.duration)
            self._add(http_row(DEMO, "V2 infer, gRPC", "grpc.aio", 16, n, 1, res, m))

    def _add_file(self, srv: Server) -> None:
        row = bench_file(srv, self.tmp, self.plan.file_rows)
        self.results.rows.append(row)
        print(f"  /predict_file {row.extra['rows']:,} rows: {row.rows_per_s:,.0f} rows/s, "
              f"RSS +{row.extra['rss_growth_mb']:.0f} MB", flush=True)  # fmt: skip

    # --- every core -------------------------------------------------------------------------

    def workers(self, rounds: int = 3) -> None:
        """One worker against two, both unpinned on every core, wrk's two threads too,
        alternating so that the machine's moods fall on both."""
        one_body = bodies.json_body(self.tmp, 1, 1)
        env = {**BENCH_ENV, **self.plan.service_env, "MODEL_NAME": DEMO}
        plan = self.plan
        w1 = start_bentoml(
            "bentoml-w1",
            self.log_dir,
            ALL_CPUS,
            {**env, "WORKERS": "1"},
            plan.service,
            plan.working_dir,
        )
        with running(self.servers, w1):
            w2 = start_bentoml(
                "bentoml-w2",
                self.log_dir,
                ALL_CPUS,
                {**env, "WORKERS": "2"},
                plan.service,
                plan.working_dir,
            )
            with running(self.servers, w2):
                for _ in range(rounds):
                    for n, srv in ((1, w1), (2, w2)):
                        self.wrk(srv, DEMO, f"/predict, WORKERS={n}", "/predict", one_body, 16,
                                 threads=2, cpus=ALL_CPUS)  # fmt: skip


def run_plan(plan: Plan, tmp: Path, log_dir: Path, servers: list[Server]) -> Results:
    runner = Runner(plan, tmp, log_dir, servers)
    import_bench_models(plan.models)
    for model in plan.models:
        runner.model(model)
    if "workers" in plan.cases and not plan.smoke:
        runner.workers()
    return runner.results


# --- /predict_file ----------------------------------------------------------------------------


def upload_file(port: int, path: Path) -> tuple[int, int]:
    """Stream `path` as multipart field `file`; return (status, rows in the answer)."""
    boundary = "benchboundary7d2a"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest("POST", "/predict_file")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + path.stat().st_size + len(tail)))
    conn.endheaders()
    conn.send(head)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            conn.send(block)
    conn.send(tail)
    resp = conn.getresponse()
    lines = 0
    while block := resp.read(1 << 20):
        lines += block.count(b"\n")
    conn.close()
    return resp.status, max(lines - 1, 0)


def bench_file(server: Server, tmp: Path, rows: int) -> Row:
    src = tmp / f"rows_{rows}.csv"
    if not src.exists():
        bodies.make_csv(src, rows)
    rss0 = peak = server.rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, server.rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Measure(server) as m:
        status, got = upload_file(server.port, src)
    done.set()
    sampler.join()
    return Row(
        model=DEMO,
        case="/predict_file CSV",
        tool="http.client",
        conns=1,
        rows_per_req=rows,
        requests=1,
        seconds=m.wall,
        rps=1 / m.wall,
        p50_ms=m.wall * 1e3,
        p99_ms=m.wall * 1e3,
        errors=int(status != 200) + int(got != rows),
        server_cpu=m.server_cpu,
        loadgen_cpu=m.loadgen_cpu,
        extra={
            "rows": rows,
            "file_mb": src.stat().st_size / 1e6,
            "rss_before_mb": rss0 / 1e6,
            "rss_growth_mb": (peak - rss0) / 1e6,
            "status": status,
            "rows_returned": got,
        },
    )
