"""`make bench-sweep`: adaptive batching's two settings against each bench model, at 64
clients of one row each on /predict_batched: rows/s, p50, p99, 503s and the mean batch size
(from BentoML's own histogram on /metrics). The sweep behind onnx_serving/model/batching.py's rule.

    python -m benchmarks.sweep [--models bench-mlp,bench-forest] [--duration 4]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks import bodies
from benchmarks.cases import BENCH_ENV, MODELS, import_bench_models
from benchmarks.loads import run_wrk
from benchmarks.report import http_row
from benchmarks.servers import LOAD_CPU, ROOT, SERVER_CPU, Server, start_bentoml
from benchmarks.targets import FOREST, MLP

SIZES = (16, 64, 512, 4096)
LATENCIES_MS = (10, 100, 1000)


def mean_batch(server: Server) -> float:
    """Mean adaptive batch size so far, from the bentoml_service_adaptive_batch_size histogram."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = sum(map(float, re.findall(r"adaptive_batch_size_sum\{[^}]*\} (\S+)", text)))
    count = sum(map(float, re.findall(r"adaptive_batch_size_count\{[^}]*\} (\S+)", text)))
    return total / count if count else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{MLP},{FOREST}")
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CPU})
    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    models = args.models.split(",")
    import_bench_models(models)
    log_dir = ROOT / "reports" / "bench" / "logs" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<13} {'max_batch':>9} {'max_lat':>7} {'rows/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'503':>6} {'batch':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        for model in models:
            body = bodies.json_body(Path(tmp), 1, MODELS[model][0])
            for size in SIZES:
                for latency in LATENCIES_MS:
                    env = {**BENCH_ENV, "MODEL_NAME": model, "BATCH_MAX_SIZE": str(size),
                           "BATCH_MAX_LATENCY_MS": str(latency)}  # fmt: skip
                    srv = start_bentoml(f"{model}-{size}-{latency}", log_dir, {SERVER_CPU}, env)
                    try:
                        res, m = run_wrk(srv, "/predict_batched", body, 64, args.duration)
                        row = http_row(model, "", "wrk", 64, 1, MODELS[model][0], res, m)
                        batch = mean_batch(srv)
                    finally:
                        srv.stop()
                    print(f"{model:<13} {size:>9} {latency:>7} {row.rows_per_s:>8,.0f} "
                          f"{row.p50_ms:>7.1f} {row.p99_ms:>7.1f} {row.refused:>6} {batch:>6.1f}",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
