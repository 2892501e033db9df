"""Overload: several times what the service can serve, then normal load again.

Opt in by adding this file to the locustfiles, with OverloadUser:

    SHAPE=overload make load-test      # or:
    locust -f load_tests/locustfile.py,load_tests/overload.py -H URL --headless OverloadUser

For --overload-seconds, --overload-users users send /predict back to back; then the load
drops to --calm-users users at --user-rps each for --calm-seconds. The service must shed
what it can't serve at once (503 with Retry-After and a JSON reason; OverloadUser counts such
an answer as "/predict [refused]", not as a failure), answer what it admits within the SLA,
and serve the calm load fully again soon after the drop. Targets:

    --p99-ms              admitted requests' p99 during the overload (the SLA)
    --refused-p99-ms      refusals' p99 (default 50): shedding must be fast
    --recovery-s          seconds after the drop until a whole second passes with no refusal
                          and the calm load fully served (default 5)
    --max-fail-ratio      anything but 200 and a proper 503 is a failure (default 0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment
from targets import Check

REFUSED = "/predict [refused]"  # as locustfile.OverloadUser names them
SETTLE_S = 1.0  # users need a moment to connect and the queue to form


@events.init_command_line_parser.add_listener
def _add_overload_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Overload (load_tests/overload.py)")
    options = [
        ("--overload-users", int, 256, "Users sending back to back during the overload"),
        ("--overload-seconds", float, 20.0, "Length of the overload, s"),
        ("--calm-users", int, 5, "Users at --user-rps after the drop"),
        ("--calm-seconds", float, 10.0, "Length of the calm phase, s"),
        ("--refused-p99-ms", float, 50.0, "Highest p99 of the refusals, ms"),
        ("--recovery-s", float, 5.0, "Longest time after the drop to serve the calm load fully"),
    ]
    for flag, kind, default, text in options:
        env = "LOCUST_" + flag.removeprefix("--").replace("-", "_").upper()
        group.add_argument(
            flag, type=kind, default=default, env_var=env, help=f"{text} (default: %(default)s)."
        )


@dataclass
class Sample:
    at: float
    name: str
    ms: float
    failed: bool


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Record:
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0


RECORD = Record()


@events.request.add_listener
def _record(name: str, response_time: float, exception: Any, **_: Any) -> None:
    RECORD.samples.append(Sample(time.monotonic(), name, response_time, exception is not None))


class OverloadShape(LoadTestShape):
    def phase(self) -> str:
        opts = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if run_time < opts.overload_seconds:
            return "overload"
        return "calm" if run_time < opts.overload_seconds + opts.calm_seconds else "done"

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        if not RECORD.started:
            RECORD.started = time.monotonic()
        phase = self.phase()
        if phase == "overload":
            return opts.overload_users, float(opts.overload_users)
        if phase == "calm":
            return opts.calm_users, float(opts.overload_users)  # stop the rest at once
        return None

    def verdict(self, environment: Environment) -> tuple[str, list[Check], list[str]]:
        opts = environment.parsed_options
        t0 = RECORD.started
        drop = t0 + opts.overload_seconds
        over = [s for s in RECORD.samples if t0 + SETTLE_S <= s.at < drop]
        admitted = [s.ms for s in over if s.name != REFUSED and not s.failed]
        refused = [s.ms for s in over if s.name == REFUSED]
        failures = sum(s.failed for s in RECORD.samples)
        recovery = self.recovery_seconds(drop, opts)
        seconds = max(opts.overload_seconds - SETTLE_S, 1e-9)
        rows = [
            f"  overload ({opts.overload_users} users, {opts.overload_seconds:g} s): "
            f"{len(admitted) / seconds:,.0f} admitted/s (p50 {percentile(admitted, 0.5):.0f} ms, "
            f"p99 {percentile(admitted, 0.99):.0f} ms), {len(refused) / seconds:,.0f} refused/s "
            f"(p50 {percentile(refused, 0.5):.0f} ms, p99 {percentile(refused, 0.99):.0f} ms)",
            f"  calm ({opts.calm_users} users x {opts.user_rps:g} req/s): served fully again "
            f"{recovery:.1f} s after the drop",
            "-" * 78,
        ]
        checks = [
            Check("refusals (load was shed)", len(refused), ">=", 1),
            Check("failed requests", failures, "<=", opts.max_fail_ratio * len(RECORD.samples)),
            Check("admitted p99 (SLA)", percentile(admitted, 0.99), "<=", opts.p99_ms, "ms"),
            Check("refused p99", percentile(refused, 0.99), "<=", opts.refused_p99_ms, "ms"),
            Check("recovery after the drop", recovery, "<=", opts.recovery_s, "s"),
        ]
        title = f"overload: {len(RECORD.samples)} requests"
        return title, checks, rows

    @staticmethod
    def recovery_seconds(drop: float, opts: Any) -> float:
        """From the drop to the start of the first whole second with no refusal in which the
        calm users got (nearly) all they asked for; infinity if that never came."""
        wanted = opts.calm_users * opts.user_rps
        calm = [s for s in RECORD.samples if s.at >= drop]
        second = 0.0
        while second + 1 <= opts.calm_seconds:
            window = [s for s in calm if drop + second <= s.at < drop + second + 1]
            served = [s for s in window if s.name != REFUSED and not s.failed]
            if len(served) == len(window) and len(served) >= 0.8 * wanted:
                return second
            second += 0.5
        return float("inf")
