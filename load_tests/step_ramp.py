"""Step ramp: find the highest request rate the service holds within the p99 target.

Opt in by adding this file to the locustfiles (Locust uses a shape class if one is loaded):

    locust -f load_tests/locustfile.py,load_tests/step_ramp.py -H URL --headless MixedUser
    SHAPE=step make load-test

Every --step-seconds it adds --step-users users (each sending --user-rps requests/s, so the
offered rate climbs in equal steps). Each step's p99 and rate are measured on that step's
requests only, after a one-second settle. The ramp stops after the first step whose p99 misses
--p99-ms (or whose failure ratio misses --max-fail-ratio), at --step-max-users, or at --run-time.
The answer is the last step that held: its rate is checked against --min-rps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment
from locust.stats import calculate_response_time_percentile
from targets import Check

SETTLE_S = 1.0  # new users need a moment to connect; keep their first requests out of the step


@events.init_command_line_parser.add_listener
def _add_ramp_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Step ramp (load_tests/step_ramp.py)")
    group.add_argument(
        "--step-users",
        type=int,
        default=10,
        env_var="LOCUST_STEP_USERS",
        help="Users added per step (default: %(default)s).",
    )
    group.add_argument(
        "--step-seconds",
        type=float,
        default=5.0,
        env_var="LOCUST_STEP_SECONDS",
        help="Length of a step, s (default: %(default)s).",
    )
    group.add_argument(
        "--step-max-users",
        type=int,
        default=300,
        env_var="LOCUST_STEP_MAX_USERS",
        help="Stop the ramp at this many users (default: %(default)s).",
    )


@dataclass
class Step:
    users: int
    started: float
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


class StepRamp(LoadTestShape):
    use_common_options = True  # --run-time still bounds the ramp

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self._snapshot: tuple[dict[int, int], int, int, float] | None = None
        self._broken = False

    # --- measuring one step -------------------------------------------------------------------

    def _take_snapshot(self) -> None:
        total = self.runner.stats.total
        self._snapshot = (
            dict(total.response_times),
            total.num_requests,
            total.num_failures,
            time.monotonic(),
        )

    def _close_step(self) -> None:
        """Measure the current step on the requests made since its snapshot."""
        if not self.steps or self._snapshot is None:
            return
        old_times, old_requests, old_failures, started = self._snapshot
        self._snapshot = None
        total = self.runner.stats.total
        times = {
            ms: n - old_times.get(ms, 0)
            for ms, n in total.response_times.items()
            if n - old_times.get(ms, 0) > 0
        }
        step = self.steps[-1]
        step.requests = total.num_requests - old_requests
        step.failures = total.num_failures - old_failures
        step.seconds = time.monotonic() - started
        step.p50_ms = calculate_response_time_percentile(times, step.requests, 0.50)
        step.p99_ms = calculate_response_time_percentile(times, step.requests, 0.99)

    def held(self, step: Step) -> bool:
        opts = self.runner.environment.parsed_options
        return (
            step.requests > 0
            and step.p99_ms <= opts.p99_ms
            and step.fail_ratio <= opts.max_fail_ratio
        )

    # --- the shape ------------------------------------------------------------------------------

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        index = int(run_time // opts.step_seconds)
        if index >= len(self.steps):
            self._close_step()
            if self.steps and not self.held(self.steps[-1]):
                self._broken = True
            users = (index + 1) * opts.step_users
            if self._broken or users > opts.step_max_users:
                return None
            self.steps.append(Step(users=users, started=run_time))
        elif self._snapshot is None and run_time - self.steps[-1].started >= SETTLE_S:
            self._take_snapshot()
        users = self.steps[-1].users
        return users, float(max(users, 1))

    # --- the verdict, called by targets.py at `quitting` ----------------------------------------

    def verdict(self, environment: Environment) -> tuple[str, list[Check], list[str]]:
        # A step cut short by --run-time counts only if it was measured for long enough.
        if self._snapshot is not None and time.monotonic() - self._snapshot[3] >= 2.0:
            self._close_step()
        measured = [s for s in self.steps if s.seconds > 0]
        best: Step | None = None
        for step in measured:
            if not self.held(step):
                break
            best = step
        opts = environment.parsed_options
        rows = ["  step  users   req/s   p50 ms   p99 ms   fails  p99 held"]
        rows += [
            f"  {i + 1:>4} {s.users:>6} {s.rps:>7.1f} {s.p50_ms:>8.0f} {s.p99_ms:>8.0f} "
            f"{s.failures:>7}  {'yes' if self.held(s) else 'NO'}"
            for i, s in enumerate(measured)
        ]
        if best is not None:
            rows.append(
                f"  highest rate held within p99 <= {opts.p99_ms:g} ms: {best.rps:.1f} req/s "
                f"at {best.users} users"
            )
        else:
            rows.append(f"  no step held p99 <= {opts.p99_ms:g} ms")
        rows.append("-" * 78)
        total = environment.stats.total
        checks = [
            Check("steps measured", len(measured), ">=", 1),
            Check("rate held within p99", best.rps if best else 0.0, ">=", opts.min_rps, "req/s"),
        ]
        title = f"step ramp: {total.num_requests} requests, {len(measured)} steps"
        return title, checks, rows
