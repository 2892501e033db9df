"""Admission control (edge/admission.py) on a fake clock."""

from __future__ import annotations

import json

import pytest

from onnx_serving.config import Settings
from onnx_serving.edge.admission import Admission


def admission(**settings: int) -> Admission:
    values = {"max_queue_ms": 25, "min_in_flight": 16, "max_in_flight": 256} | settings
    return Admission(Settings(**values))  # type: ignore[arg-type]


def late_ticks(gate: Admission, lag_s: float, seconds: float, start: float = 0.0) -> float:
    """Ticks every 10 ms, each `lag_s` late, for `seconds`: the time after the last."""
    now = start
    while now < start + seconds:
        gate.observe(lag_s, now)
        now += 0.01
    return now


def test_admission_counts_in_and_out_up_to_its_limit() -> None:
    gate = admission(max_in_flight=2, min_in_flight=1)
    assert gate.admit() and gate.admit() and not gate.admit()
    assert gate.refused == 1
    refusal = gate.refusal(keep_alive=True).decode()
    assert refusal.startswith("HTTP/1.1 503") and "retry-after: 1" in refusal
    assert "connection: close" not in refusal
    assert "MAX_IN_FLIGHT=2" in json.loads(refusal.split("\r\n\r\n", 1)[1])["error"]
    assert "connection: close" in gate.refusal(keep_alive=False).decode()
    gate.done()
    assert gate.admit()


def test_a_burst_or_a_pause_cuts_nothing() -> None:
    gate = admission()
    # Late (4x the 25 ms target and more), but for less than INTERVAL_S: a burst.
    now = late_ticks(gate, 0.2, Admission.INTERVAL_S - 0.02)
    assert gate.limit == 256
    # Late under ONSET x target never starts shedding, however long.
    late_ticks(gate, 0.09, 5.0, now)
    assert gate.limit == 256


def test_a_lasting_queue_cuts_in_proportion_and_never_below_the_floor() -> None:
    gate = admission()
    gate.observe(0.2, 0.0)  # late past ONSET x target (100 ms): the clock starts
    gate.observe(0.2, Admission.INTERVAL_S - 0.01)
    assert gate.limit == 256
    gate.observe(0.2, Admission.INTERVAL_S)  # late for INTERVAL_S: cut, at most halved
    assert gate.limit == 128
    body = gate.refusal(keep_alive=True).decode().split("\r\n\r\n", 1)[1]
    assert "requests wait 200 ms to start (MAX_QUEUE_MS=25)" in json.loads(body)["error"]
    # Once shedding, the target itself (25 ms) is the line: 30 ms late takes a sixth off.
    gate.observe(0.03, Admission.INTERVAL_S + 0.01)
    assert gate.limit == pytest.approx(128 * 25 / 30)
    late_ticks(gate, 0.2, 1.0, Admission.INTERVAL_S + 0.02)
    assert gate.limit == 16  # MIN_IN_FLIGHT


def test_the_limit_recovers_a_quarter_request_per_tick_on_time() -> None:
    gate = admission()
    now = late_ticks(gate, 0.2, 1.0)
    assert gate.limit == 16
    late_ticks(gate, 0.0, 0.995, now)  # 100 ticks on time
    assert gate.limit == 16 + 100 * Admission.INCREASE
    late_ticks(gate, 0.0, 10.0, now + 1.0)
    assert gate.limit == 256  # and no further


def test_the_ticker_slows_down_only_when_the_worker_is_idle() -> None:
    gate = admission()
    assert not gate.busy()  # nothing in flight, arriving or admitted: a tick every 250 ms
    assert gate.admit()
    gate.done()
    assert gate.busy()  # admitted since the last tick, though done
    gate.admissions = 0  # the next tick
    assert not gate.busy()
    gate.receiving += 1
    assert gate.busy()
    gate.receiving -= 1
    gate.admit()
    gate.admissions = 0
    assert gate.busy()  # one in flight
    gate.done()
    late_ticks(gate, 0.2, 1.0)  # shedding: the limit climbs back tick by tick
    gate.admissions = 0
    assert gate.limit < gate.ceiling and gate.busy()
