"""`make bench`: the service against the in-process limit and a FastAPI baseline, per model.

One run, one table per model, one JSON file under reports/bench/. The server is pinned to
core 0 and every load generator to core 1 (this process too), so they don't fight; each row
shows both sides' CPU use, so a saturated load generator is visible. The parts:
servers.py (what is started), loads.py (wrk and the Python client), bodies.py, cases.py
(what is measured, in order), report.py (rows and tables), targets.py (PASS / MISS).

    python -m benchmarks.bench [--smoke] [--duration 4] [--models linear-2x,bench-mlp]
                               [--cases limit,baseline,pyclient,file,workers] [--file-rows N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.cases import MODELS, Plan, run_plan
from benchmarks.report import add_ratios, table
from benchmarks.servers import ALL_CPUS, LOAD_CPU, ROOT, Server
from benchmarks.targets import targets

CASES = "limit,baseline,pyclient,file,workers"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", default=env.get("BENCH_SMOKE") == "1")
    p.add_argument("--duration", type=float, default=float(env.get("BENCH_DURATION") or 4))
    p.add_argument("--file-rows", type=int, default=int(env.get("FILE_ROWS") or 1_000_000))
    p.add_argument("--out", type=Path, default=Path(env.get("BENCH_OUT") or ROOT / "reports/bench"))
    p.add_argument(
        "--models",
        default=env.get("BENCH_MODELS") or ",".join(MODELS),
        help=f"comma-separated subset of: {','.join(MODELS)}",
    )
    p.add_argument(
        "--cases",
        default=env.get("BENCH_CASES") or CASES,
        help=f"what to add to each model's /predict and /predict_batched runs: {CASES}",
    )
    p.add_argument("--service", default="service:OnnxServing", help="bentoml serve target")
    p.add_argument("--working-dir", type=Path, default=ROOT, help="where --service lives")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="service env")
    p.add_argument("--label", default="", help="added to the JSON file name")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(ALL_CPUS) < 2:
        raise SystemExit("the bench needs 2 CPUs: one for the server, one for the load generator")
    # This process (and the clients it starts) stays on the load generator's core.
    os.sched_setaffinity(0, {LOAD_CPU})
    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    plan = Plan(
        duration=1.0 if args.smoke else args.duration,
        conns=[1] if args.smoke else [1, 16, 64],
        file_rows=min(args.file_rows, 20_000) if args.smoke else args.file_rows,
        smoke=args.smoke,
        models=models[:1] if args.smoke else models,
        cases=set(args.cases.split(",")),
        service=args.service,
        service_env=dict(kv.split("=", 1) for kv in args.env),
        working_dir=args.working_dir.resolve(),
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "duration": plan.duration,
        "smoke": plan.smoke,
        "file_rows": plan.file_rows,
        "models": plan.models,
        "service_env": plan.service_env,
        "python": platform.python_version(),
        "git": _git_rev(),
    }
    servers: list[Server] = []
    # SIGTERM (e.g. from a test runner's timeout) takes the same clean-up path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    print(f"bench: {'smoke, ' if plan.smoke else ''}{plan.duration:g} s per case; logs in "
          f"{log_dir}", flush=True)  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            results = run_plan(plan, Path(tmp), log_dir, servers)
    finally:
        for s in list(servers):
            s.stop()
    meta["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    add_ratios(results.rows, results.limits)
    checks = targets(
        results.rows,
        results.limits,
        results.batching,
        plan.file_rows,
        results.paired,
        results.causes,
    )
    models_info = {
        m: {
            "about": MODELS[m][1],
            "limit": results.limits.get(m, {}),
            "batching": results.batching.get(m, {}),
        }
        for m in plan.models
    }
    print("\n" + table(results.rows, checks, meta, models_info))
    print(f"\n{meta['minutes']} min")
    name = f"bench-{stamp}{'-smoke' if plan.smoke else ''}{'-' + args.label if args.label else ''}"
    records = [
        {**asdict(r), "rows_per_s": r.rows_per_s, "cpu_us_per_req": r.cpu_us_per_req}
        for r in results.rows
    ]
    limits = {m: {**lim, "json": list(lim["json"].values())} for m, lim in results.limits.items()}
    report = {
        "meta": meta,
        "limits": limits,
        "batching": results.batching,
        "paired": results.paired,
        "causes": results.causes,
        "rows": records,
        "targets": checks,
    }
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    (args.out / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"JSON: {path}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _git_rev() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
        return out.stdout.decode().strip()
    return ""


if __name__ == "__main__":
    sys.exit(main())
