"""Targets as Locust custom arguments, and the pass/fail gate at the end of a run.

Each target is a command-line option, a LOCUST_* environment variable and a locust.conf key:

    --max-fail-ratio  LOCUST_MAX_FAIL_RATIO  failed / all requests, at most (default 0)
    --p95-ms          LOCUST_P95_MS          95th percentile response time, at most
    --p99-ms          LOCUST_P99_MS          99th percentile response time, at most
    --min-rps         LOCUST_MIN_RPS         requests per second over the run, at least
    --user-rps        LOCUST_USER_RPS        requests per second each user sends (0 = no pause)

At `quitting` the totals are compared with the targets and `environment.process_exit_code` is set:
0 if every target held, 1 otherwise. The table is printed last, after Locust's own summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from locust import constant_throughput, events
from locust.env import Environment
from locust.runners import WorkerRunner

# Defaults: what this service is promised to meet on the 2-core reference machine, `bentoml serve`
# with its default config, under the default load (10 MixedUser x 10 req/s = 100 req/s offered).
# Three 30 s runs measured p95 22-31 ms, p99 39-48 ms, 100 req/s, no failures: the latency
# targets are about twice the worst run, the throughput target 90% of the offered rate.
DEFAULT_P95_MS = 60.0
DEFAULT_P99_MS = 100.0
DEFAULT_MIN_RPS = 90.0
DEFAULT_USER_RPS = 10.0


@events.init_command_line_parser.add_listener
def _add_target_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Targets (a missed target makes the run exit 1)")
    group.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.0,
        env_var="LOCUST_MAX_FAIL_RATIO",
        help="Highest share of failed requests, 0..1 (default: %(default)s).",
    )
    group.add_argument(
        "--p95-ms",
        type=float,
        default=DEFAULT_P95_MS,
        env_var="LOCUST_P95_MS",
        help="Highest 95th percentile response time over the run, ms (default: %(default)s).",
    )
    group.add_argument(
        "--p99-ms",
        type=float,
        default=DEFAULT_P99_MS,
        env_var="LOCUST_P99_MS",
        help="Highest 99th percentile response time, ms; also the step ramp's limit "
        "(default: %(default)s).",
    )
    group.add_argument(
        "--min-rps",
        type=float,
        default=DEFAULT_MIN_RPS,
        env_var="LOCUST_MIN_RPS",
        help="Lowest throughput over the run, requests/s; with the step ramp, the lowest rate "
        "that must hold within --p99-ms (default: %(default)s).",
    )
    group.add_argument(
        "--user-rps",
        type=float,
        default=DEFAULT_USER_RPS,
        env_var="LOCUST_USER_RPS",
        help="Requests per second each user sends; 0 sends the next request as soon as the "
        "last one is answered (default: %(default)s).",
    )


def paced(user: Any) -> float:
    """wait_time: each user sends --user-rps requests per second (or, if 0, back to back)."""
    options = user.environment.parsed_options
    rate = getattr(options, "user_rps", DEFAULT_USER_RPS) if options else DEFAULT_USER_RPS
    return constant_throughput(rate)(user) if rate > 0 else 0.0


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


@dataclass
class Check:
    name: str
    measured: float
    op: str  # "<=" or ">="
    target: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        if self.op == "<=":
            return self.measured <= self.target
        return self.measured >= self.target

    def row(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        measured = f"{_fmt(self.measured)} {self.unit}".strip()
        target = f"{self.op} {_fmt(self.target)} {self.unit}".strip()
        return f"  {status:<4}  {self.name:<30} {measured:>16}   target {target}"


def total_checks(environment: Environment) -> list[Check]:
    """The steady-run checks on the totals of all requests."""
    opts = environment.parsed_options
    total = environment.stats.total
    p95, p99 = (total.get_response_time_percentile(p) for p in (0.95, 0.99))
    return [
        Check("requests made", total.num_requests, ">=", 1),
        Check("failure ratio", total.fail_ratio, "<=", opts.max_fail_ratio),
        Check("p95 response time", p95, "<=", opts.p95_ms, "ms"),
        Check("p99 response time", p99, "<=", opts.p99_ms, "ms"),
        Check("throughput", total.total_rps, ">=", opts.min_rps, "req/s"),
    ]


_report: list[str] = []


@events.quitting.add_listener
def _gate(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # only the master (or the single local process) judges the run
    shape = environment.shape_class
    lines: list[str] = []
    if shape is not None and hasattr(shape, "verdict"):
        title, checks, extra = shape.verdict(environment)
        lines += extra
    else:
        total = environment.stats.total
        title = (
            f"steady run: {total.num_requests} requests, "
            f"p50 {total.get_response_time_percentile(0.5)} ms, {total.total_rps:.1f} req/s"
        )
        checks = total_checks(environment)
    passed = all(c.passed for c in checks)
    lines = [
        "",
        "=" * 78,
        f"Load test targets - {title}",
        "-" * 78,
        *lines,
        *(c.row() for c in checks),
        "-" * 78,
        f"RESULT: {'PASS' if passed else 'FAIL'} (exit code {0 if passed else 1})",
        "=" * 78,
    ]
    environment.process_exit_code = 0 if passed else 1
    _report[:] = lines
    csv_prefix = environment.parsed_options.csv_prefix
    if csv_prefix:
        # Kept with the CSV and HTML reports, for CI artifacts.
        path = os.path.join(os.path.dirname(csv_prefix) or ".", "targets.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[1:]) + "\n")


@events.quit.add_listener
def _print_report(**_: Any) -> None:
    # Printed at `quit`, after Locust's summary tables, so the verdict is the last thing shown.
    if _report:
        print("\n".join(_report), flush=True)
