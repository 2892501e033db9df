"""`make bench-profile`: where one /predict request's CPU goes, layer by layer.

One worker (`WORKERS=1`) pinned to core 0 answers wrk (core 1, 16 connections, one row per
request) while py-spy samples the worker. Each sample is charged to the innermost layer its
stack is in (the code that was running: self time by layer), and the worker's CPU seconds
over the window are split in those shares, per request. The FastAPI baseline
(baseline_fastapi.py) is measured the same way beside it, so the two floors can be compared
in one run. py-spy is in the `dev` extra.

    python -m benchmarks.profile [--models linear-2x,bench-mlp,bench-forest] [--duration 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.cases import BENCH_ENV, MODELS, import_bench_models
from benchmarks.loads import run_wrk
from benchmarks.servers import LOAD_CPU, PY, ROOT, SERVER_CPU, Server, pin, start_baseline
from benchmarks.servers import start_bentoml as start_service

# Layers, innermost first wins: (name, pattern on a frame: "function (file:line)"). The socket
# write counts as the HTTP protocol's, where it is in the baseline (uvloop writes in C, inside
# uvicorn's frames), so that the two columns compare like with like.
LAYERS = [
    ("model: ONNX Runtime", r"onnxruntime/"),
    ("model: runner (ours)", r"onnx_serving/model/"),
    ("protocol codec (ours)", r"onnx_serving/protocols/"),
    ("versions (ours)", r"onnx_serving/versions/"),
    ("service.py APIs (ours)", r"/service\.py"),
    ("pydantic validation and serialization", r"pydantic"),
    (
        "edge middleware (ours)",
        r"onnx_serving/edge/|_patches/uvicorn_drain|_patches/bentoml_timeout",
    ),
    ("FastAPI baseline app", r"baseline_fastapi"),
    ("BentoML app, IO and middleware", r"bentoml/|_bentoml_impl/|_bentoml_sdk/"),
    ("OpenTelemetry hooks", r"opentelemetry/"),
    ("Prometheus metrics", r"prometheus_client/"),
    ("Starlette and FastAPI routing", r"starlette/|fastapi/"),
    (
        "HTTP protocol, socket writes (uvicorn, ours)",
        r"uvicorn/|httptools|_patches/uvicorn_http|_SelectorSocketTransport\.write ",
    ),
    ("event loop (asyncio)", r"asyncio/|selectors\.py|_patches/asyncio_accept"),
    ("logging, context, other Python", r"."),
]
FRAME = re.compile(r"(?:^|;)(?P<frame>[^;]+? \([^:();]+:\d+\))")


def layer_of(stack: str) -> str:
    """The layer of a sample: of the innermost frame that belongs to a named layer."""
    frames = [m.group("frame") for m in FRAME.finditer(stack)]
    for frame in reversed(frames):
        for name, pattern in LAYERS[:-1]:
            if re.search(pattern, frame):
                return name
    return LAYERS[-1][0]


def sample(pid: int, seconds: float, out: Path) -> None:
    """py-spy samples `pid` at 250 Hz for `seconds` into `out` (collapsed stacks)."""
    spy = Path(PY).parent / "py-spy"
    # --nonblocking: the worker is never paused to be read, so it runs as it would unwatched.
    cmd = [*pin({LOAD_CPU}), str(spy), "record", "-p", str(pid), "-r", "250", "--nonblocking"]
    cmd += ["-d", str(max(1, round(seconds))), "-f", "raw", "-o", str(out)]
    subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=True)


def profile(server: Server, pid: int, body: Path, duration: float, out: Path) -> dict:
    """wrk on /predict while py-spy samples (collapsed stacks kept in `out`): req/s, CPU per
    request, and its split by layer."""
    # wrk runs past the sampling window on both sides: the samples see only steady load.
    result: dict = {}

    def load() -> None:
        result["wrk"], result["measure"] = run_wrk(server, "/predict", body, 16, duration + 2)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)
    sample(pid, duration, out)
    loader.join()
    stats, measure = result["wrk"], result["measure"]
    requests = stats["requests"]
    cpu_s = (measure.server_cpu or 0.0) / 100 * measure.wall
    cpu_us = cpu_s * 1e6 / requests if requests else 0.0
    counts: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            counts[layer_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {
        "req_s": requests / (stats["duration_us"] / 1e6),
        "cpu_us_per_request": cpu_us,
        "p50_ms": stats["p50_us"] / 1000,
        "samples": total,
        "layers": {
            name: {"share": counts[name] / total, "us": cpu_us * counts[name] / total}
            for name, _ in LAYERS
            if counts[name]
        },
    }


def body_for(model: str, work: Path) -> Path:
    features = MODELS[model][0]
    path = work / f"{model}.json"
    row = [0.5] * features if features > 1 else [0.5]
    path.write_text(json.dumps({"x": [row] if features > 1 else row}))
    return path


def print_table(model: str, service: dict, baseline: dict) -> None:
    ratio = service["req_s"] / baseline["req_s"] if baseline["req_s"] else 0.0
    print(f"\n{model}: /predict, 16 connections, one row per request, one core each")
    print(
        f"  this service  {service['req_s']:8,.0f} req/s  {service['cpu_us_per_request']:6.0f} "
        f"µs CPU/request  p50 {service['p50_ms']:.2f} ms"
    )
    print(
        f"  FastAPI app   {baseline['req_s']:8,.0f} req/s  {baseline['cpu_us_per_request']:6.0f} "
        f"µs CPU/request  p50 {baseline['p50_ms']:.2f} ms   (service/baseline {ratio:.2f}x)"
    )
    print(f"  {'layer (self time)':44} {'service µs':>11} {'share':>6} {'baseline µs':>12}")
    for name, _ in LAYERS:
        s = service["layers"].get(name)
        b = baseline["layers"].get(name)
        if s or b:
            print(
                f"  {name:44} {s['us'] if s else 0:11.0f} {s['share'] if s else 0:6.1%} "
                f"{b['us'] if b else 0:12.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "profile")
    args = p.parse_args(argv)
    models = args.models.split(",")
    import_bench_models(models)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in models:
            body = body_for(model, work)
            env = {**BENCH_ENV, "MODEL_NAME": model}
            service = start_service(f"service-{model}", work, {SERVER_CPU}, env)
            try:
                (worker,) = service.workers()
                raw = args.out / f"{model}-service.raw"
                measured = profile(service, worker.pid, body, args.duration, raw)
            finally:
                service.stop()
            baseline = start_baseline(f"baseline-{model}", work, model, [])
            try:
                raw = args.out / f"{model}-baseline.raw"
                base = profile(baseline, baseline.proc.pid, body, args.duration, raw)
            finally:
                baseline.stop()
            report[model] = {"service": measured, "baseline": base}
            print_table(model, measured, base)
    path = args.out / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
