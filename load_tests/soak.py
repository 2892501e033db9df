"""Soak: about 70 % of capacity for 10 minutes; memory must stay flat and nothing may fail.

    make soak                                   # starts `bentoml serve`, 10 min, then stops it
    .venv/bin/python -m load_tests.soak --seconds 120 --url http://127.0.0.1:3000

Both phases are Locust runs through load_tests/run.sh with the realistic mix (MixedUser:
single values to /predict and /predict_batched, 1,000-value batches, CSV files, /metadata),
every answer checked. First the capacity: 32 users back to back for 15 s. Then --load (0.7)
of that rate, paced (users x 10 req/s), for --seconds, while the workers' resident memory is
sampled every 5 s. It fails (exit 1) if any request fails, or if memory after warm-up
(--warmup, 60 s) rises more than --max-growth (10 %) above its level at the end of warm-up.
It prints the series and draws it to reports/soak/<stamp>/memory.png. Not part of
`make test`: it runs for minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.local_server import ServerProcess, bentoml_workers, free_port  # noqa: E402

USER_RPS = 10  # each user's pace during the soak (locust --user-rps)


def locust(url: str, report_dir: Path, run_time: str, **env: str) -> subprocess.CompletedProcess:
    """load_tests/run.sh against `url` with the mix; Locust's own report in `report_dir`."""
    full_env = {**os.environ, "HOST": url, "RUN_TIME": run_time, "REPORT_DIR": str(report_dir)}
    full_env.update(LOCUST_USER_CLASSES="MixedUser", **env)
    return subprocess.run(
        ["bash", str(ROOT / "load_tests" / "run.sh"), "serve"],
        cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def aggregated(report_dir: Path) -> dict[str, str]:
    with open(report_dir / "locust_stats.csv", newline="") as f:
        return next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")


def worker_rss(server: ServerProcess | None) -> float:
    """Resident memory (MB) of the service's workers (every BentoML worker here if the
    service was not started by this script)."""
    procs = server.workers() if server else bentoml_workers(psutil.process_iter())
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def draw(series: list[tuple[float, float]], warmup: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t / 60 for t, _ in series], [m for _, m in series], marker=".")
    ax.axvline(warmup / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_title("Soak: resident memory of the service's workers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start `bentoml serve`)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of capacity to send")
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args()

    out = ROOT / "reports" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.url is None:
        port = free_port()
        cmd = [str(ROOT / ".venv/bin/bentoml"), "serve", "service:OnnxServing"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        # The project's models (or BENTOML_HOME's), in a home of its own: `bentoml serve`
        # empties its home's prometheus_multiproc_dir, a running `make serve`'s /metrics too.
        store = Path(os.environ.get("BENTOML_HOME") or ROOT / ".bentoml")
        (out / "bentoml-home").mkdir()
        (out / "bentoml-home" / "models").symlink_to((store / "models").resolve())
        env = {"BENTOML_HOME": str(out / "bentoml-home")}
        server = ServerProcess("bentoml serve", cmd, port, env, out / "server.log", ROOT)
        server.wait_ready()
    url = args.url or server.url
    series: list[tuple[float, float]] = []
    try:
        probe = locust(url, out / "capacity", "15s", LOCUST_USERS="32", LOCUST_USER_RPS="0",
                       LOCUST_SPAWN_RATE="32", LOCUST_MIN_RPS="0", LOCUST_P95_MS="1e9",
                       LOCUST_P99_MS="1e9")  # fmt: skip
        capacity = float(aggregated(out / "capacity")["Requests/s"])
        users = max(1, math.ceil(args.load * capacity / USER_RPS))
        rate = f"{users * USER_RPS:,} req/s ({users} users)"
        print(f"capacity {capacity:,.0f} req/s (the mix, Locust exit {probe.returncode}); "
              f"soaking at {rate} for {args.seconds:.0f} s")  # fmt: skip
        started = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5.0 if series else 0.0):
                t = time.monotonic() - started
                series.append((t, worker_rss(server)))
                print(f"  {t:6.0f} s  {series[-1][1]:7.1f} MB", flush=True)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        soak = locust(url, out / "soak", f"{int(args.seconds)}s", LOCUST_USERS=str(users),
                      LOCUST_SPAWN_RATE=str(users), LOCUST_USER_RPS=str(USER_RPS),
                      LOCUST_MAX_FAIL_RATIO="0", LOCUST_MIN_RPS="0", LOCUST_P95_MS="1e9",
                      LOCUST_P99_MS="1e9")  # fmt: skip
        done.set()
        sampler.join()
        series.append((time.monotonic() - started, worker_rss(server)))
    finally:
        if server is not None:
            server.stop()
    stats = aggregated(out / "soak")
    failed = int(stats["Failure Count"])
    after = [m for t, m in series if t >= args.warmup]
    base = after[0] if after else series[-1][1]
    growth = (max(after) - base) / base if after else 0.0
    draw(series, args.warmup, out / "memory.png")
    (out / "memory.json").write_text(json.dumps({"series": series, "locust": stats}))
    ok = soak.returncode == 0 and failed == 0 and growth <= args.max_growth
    print(
        f"\n{int(stats['Request Count']):,} requests ({float(stats['Requests/s']):,.0f} req/s), "
        f"{failed} failed; memory after warm-up {base:.1f} MB, peak "
        f"{max(after, default=base):.1f} MB ({100 * growth:+.1f} %, "
        f"limit {100 * args.max_growth:.0f} %)"
    )
    print(f"chart: {out / 'memory.png'}; Locust reports: {out}\nRESULT: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
