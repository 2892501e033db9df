"""Admission control: shed load before it queues, decided per request before the app runs.

A worker's requests wait in its event loop's queue before they run; that wait is what a
client sees as latency. A ticker asks to wake every 10 ms and notes how late it woke: the
loop's lag, which is how long a request that arrives now waits to be read and to start.
An idle worker's ticker wakes every 250 ms instead (`busy`).

The worker admits at most `limit` prediction requests (POSTs) at once, and the limit adapts
as TCP's congestion window does (additive increase, multiplicative decrease):

- shedding starts on a pile-up that lasts: ticks later than ONSET x MAX_QUEUE_MS (100 ms)
  for INTERVAL_S (250 ms). At 70 % of capacity the lag passes 25 ms on 9 % of ticks and
  never stays there long, and a capacity dip of the machine (seen in soaks: 50 ms for 3 s)
  only queues, within the SLA;
- then every tick later than MAX_QUEUE_MS, once they have stayed late for INTERVAL_S, cuts
  the limit in proportion to how late it is, down to MIN_IN_FLIGHT; every tick on time adds
  a quarter, up to MAX_IN_FLIGHT, where shedding ends (slowly, so that a steady overload
  does not climb back to a pile-up between cuts). So at several times capacity the worker
  keeps as many requests as it answers within the target, whatever one call of the model
  costs, and refuses the rest.

The refusal is written by the HTTP protocol itself (onnx_serving/_patches/uvicorn_http.py) as
soon as the request's headers are parsed: no task, no BentoML middleware, so refusing thousands of
requests a second leaves the worker free for the ones it admits. gRPC's ModelInfer calls take
slots of the same worker's one Admission (`worker_admission`), refused with RESOURCE_EXHAUSTED
before their message is read (onnx_serving/protocols/grpc_server.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

from onnx_serving.config import Settings, settings

logger = logging.getLogger("bentoml.onnx_serving.edge.admission")


class Admission:
    TICK_S = 0.010
    IDLE_TICK_S = 0.25  # while nothing is in flight or arriving (busy())
    INTERVAL_S = 0.25  # how long ticks must stay late before the limit is cut
    ONSET = 4  # shedding starts when the lag stays above ONSET x MAX_QUEUE_MS
    INCREASE = 0.25  # added to the limit by each tick on time: 25 a second at most
    MIN_DECREASE = 0.5  # the deepest cut of the limit on one late tick

    def __init__(self, settings: Settings) -> None:
        self.target_s = settings.max_queue_ms / 1000
        self.max_queue_ms = settings.max_queue_ms
        self.floor, self.ceiling = settings.min_in_flight, settings.max_in_flight
        self.retry_after_s = settings.retry_after_s
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self.receiving = 0  # POSTs whose body is still arriving: no slot yet (http_protocol)
        self.lag_s = 0.0
        self.above_since: float | None = None  # when the lag went (and stayed) above target
        self.refused = 0  # since the last log line
        self.admissions = 0  # requests admitted or refused since the last tick
        self._responses: dict[bool, bytes] = {}  # the 503s, rebuilt each tick
        self._ticker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the ticker in the running loop (once; the first connection calls it)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        published = 0.0
        while True:
            period = self.TICK_S if self.busy() else self.IDLE_TICK_S
            self.admissions = 0
            started = time.perf_counter()
            await asyncio.sleep(period)
            now = time.perf_counter()
            self.observe(max(0.0, now - started - period), now)
            if now - published >= 0.5:  # saturation on /metrics, not per request
                self._publish()
                published = now

    def busy(self) -> bool:
        """Whether the next tick must come at TICK_S: requests in flight or arriving, any
        admitted or refused since the last tick, or the limit below its ceiling. An idle
        worker ticks every IDLE_TICK_S instead (4 wake-ups a second, not 100: the ticker
        cost each idle worker 2 % of a core)."""
        return bool(self.in_flight or self.receiving or self.admissions) or (
            self.limit < self.ceiling
        )

    def observe(self, lag_s: float, now: float) -> None:
        """One tick: the event loop's lag (how late the tick woke) at time `now` (seconds)."""
        self.lag_s = lag_s
        self._responses.clear()
        was = self.limit
        shedding = self.limit < self.ceiling
        # Shedding starts only on a clear pile-up (ONSET x the target); once shedding, the
        # limit holds the lag near the target itself.
        late = self.lag_s > self.target_s * (1 if shedding else self.ONSET)
        if not late:
            self.above_since = None
            if self.lag_s <= self.target_s:
                self.limit = min(float(self.ceiling), self.limit + self.INCREASE)
        else:
            # As in CoDel, only a queue that lasts is answered, not a burst or a pause: the
            # limit is cut by each late tick once ticks have stayed late INTERVAL_S.
            if self.above_since is None:
                self.above_since = now
            if now - self.above_since >= self.INTERVAL_S:
                # In proportion to how late: 100 ms against a 25 ms target halves the limit,
                # 30 ms takes a sixth off.
                cut = max(self.MIN_DECREASE, self.target_s / self.lag_s)
                self.limit = max(float(self.floor), self.limit * cut)
        self._log_change(was)

    def _publish(self) -> None:
        from onnx_serving import metrics

        metrics.IN_FLIGHT.set(self.in_flight)
        metrics.RECEIVING.set(self.receiving)
        metrics.ADMISSION_LIMIT.set(int(self.limit))

    def _log_change(self, was: float) -> None:
        # One line when shedding starts and one when the limit is back at its ceiling.
        if was >= self.ceiling > self.limit:
            logger.warning(
                "overloaded: the event loop lags %.0f ms (MAX_QUEUE_MS=%d); admitting fewer "
                "requests at once",
                self.lag_s * 1000,
                self.max_queue_ms,
            )
        elif was < self.ceiling <= self.limit:
            logger.warning("overload over: %d request(s) refused with 503", self.refused)
            self.refused = 0

    def admit(self) -> bool:
        """Count a prediction request in, if there is room for it (then call done() once)."""
        self.admissions += 1
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    def done(self, _: object = None) -> None:
        self.in_flight -= 1

    def refusal(self, keep_alive: bool) -> bytes:
        """The whole HTTP 503 response: JSON reason and Retry-After."""
        response = self._responses.get(keep_alive)
        if response is None:
            response = self._responses[keep_alive] = self._refusal(keep_alive)
        return response

    def why(self) -> str:
        """What a refusal tells the client: the limit that refused it, and retry later."""
        if self.in_flight >= self.ceiling:
            why = f"{self.in_flight} requests in flight (MAX_IN_FLIGHT={self.ceiling})"
        else:
            why = (
                f"requests wait {self.lag_s * 1000:.0f} ms to start (MAX_QUEUE_MS="
                f"{self.max_queue_ms}); {self.in_flight} admitted at once"
            )
        return f"overloaded: {why}; retry later"

    def _refusal(self, keep_alive: bool) -> bytes:
        body = json.dumps({"error": self.why()}).encode()
        return b"".join(
            (
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n",
                b"retry-after: %d\r\ncontent-length: %d\r\n" % (self.retry_after_s, len(body)),
                b"" if keep_alive else b"connection: close\r\n",
                b"\r\n",
                body,
            )
        )


@functools.cache
def worker_admission() -> Admission:
    """The worker's one Admission: HTTP's and gRPC's prediction requests share its slots."""
    return Admission(settings())
