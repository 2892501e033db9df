"""A bench run's rows, the targets they are judged by (PASS / MISS with the figures), and the
printed tables: one per model, then the service-wide cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of a table (and one record of the JSON report)."""

    model: str  # the store name of the model served, or "" for service-wide cases
    case: str
    tool: str
    conns: int
    rows_per_req: int
    features: int = 1
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0  # anything but a 2xx or a 503
    refused: int = 0  # 503s
    server_cpu: float | None = None
    loadgen_cpu: float | None = None
    x_limit: float | None = None
    x_baseline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        """Rows answered (not refused) per second."""
        answered = max(self.requests - self.refused - self.errors, 0)
        return answered * self.rows_per_req / self.seconds if self.seconds else 0.0

    @property
    def values_per_s(self) -> float:
        return self.rows_per_s * self.features

    @property
    def cpu_us_per_req(self) -> float | None:
        """Server CPU time per request: steadier than req/s when other jobs share the core."""
        if self.server_cpu is None or not self.conns or self.requests < 2:
            return None
        return self.server_cpu * 1e4 / self.rps


def http_row(
    model: str, case: str, tool: str, conns: int, rows: int, features: int, res: dict, m: Any
) -> Row:
    """A Row from a wrk or python-client result and its Measure."""
    seconds = res["duration_us"] / 1e6
    # On one connection, latencies can't add up to more than the run's wall time. wrk's can
    # (it times requests with gettimeofday; its histogram was seen to sum to 4x the wall time
    # here): such rows are flagged "!" and the python client's percentiles are the ones to trust.
    if "mean_us" in res:
        busy = res["mean_us"] * res["requests"] / 1e6
        res = {**res, "latency_consistent": busy <= 1.05 * conns * seconds}
    refused = res.get("status_503", 0)
    errors = res.get("errors", 0) + sum(
        res.get(k, 0) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    errors += res.get("status_errors", 0) - refused
    return Row(
        model=model,
        case=case,
        tool=tool,
        conns=conns,
        rows_per_req=rows,
        features=features,
        requests=res["requests"],
        seconds=seconds,
        rps=res["requests"] / seconds,
        p50_ms=res["p50_us"] / 1e3,
        p99_ms=res["p99_us"] / 1e3,
        errors=errors,
        refused=refused,
        server_cpu=m.server_cpu,
        loadgen_cpu=m.loadgen_cpu,
        extra=res,
    )


def find(
    rows: list[Row], model: str, case: str, conns: int, per_req: int = 1, tool: str = "wrk"
) -> Row | None:
    key = (model, case, conns, per_req, tool)
    matches = (r for r in rows if (r.model, r.case, r.conns, r.rows_per_req, r.tool) == key)
    return next(matches, None)


def add_ratios(rows: list[Row], limits: dict[str, dict]) -> None:
    """x_limit: rows/s against the in-process limit with JSON for the same body; x_baseline:
    rows/s against the FastAPI baseline at the same clients and body."""
    for r in rows:
        body = r.extra.get("body")
        lim = limits.get(r.model, {}).get("json", {}).get(body)
        if lim and r.conns:
            r.x_limit = r.rows_per_s / (lim["calls_per_s"] * r.rows_per_req)
        if r.case.startswith("baseline"):
            continue
        base = find(rows, r.model, "baseline FastAPI", r.conns, r.rows_per_req, r.tool)
        if base is not None and base.rows_per_s and r.conns and r is not base:
            r.x_baseline = r.rows_per_s / base.rows_per_s


def _fmt(v: float | None, spec: str) -> str:
    width = int(spec.split(".")[0].rstrip(",f") or 0)
    return f"{'-':>{width}}" if v is None else format(v, spec)


HEAD = (
    f"{'case':<26} {'tool':<7} {'conn':>4} {'rows':>5} {'req/s':>8} {'rows/s':>10} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'503':>5} {'err':>4} {'srv%':>5} {'gen%':>5} {'us/req':>6} "
    f"{'xlimit':>6} {'xbase':>6}"
)


def _line(r: Row) -> str:
    flag = "!" if r.extra.get("latency_consistent") is False else " "
    rows = f"{r.rows_per_req}" + (f"x{r.features}" if r.features > 1 else "")
    return (
        f"{r.case[:26]:<26} {r.tool[:7]:<7} {r.conns or '-':>4} {rows:>5} {r.rps:>8,.0f} "
        f"{r.rows_per_s:>10,.0f} {_fmt(r.p50_ms, '8.2f')} {_fmt(r.p99_ms, '7.2f')}{flag} "
        f"{r.refused:>5} {r.errors:>4} {_fmt(r.server_cpu, '5.0f')} {_fmt(r.loadgen_cpu, '5.0f')} "
        f"{_fmt(r.cpu_us_per_req, '6.0f')} {_fmt(r.x_limit, '6.2f')} {_fmt(r.x_baseline, '6.2f')}"
    )


def model_header(model: str, about: str, limit: dict, batching: dict) -> list[str]:
    costs = {int(k): v for k, v in limit.get("costs", {}).items()}
    lines = [f"== {model}: {about}"]
    if costs:
        per_row = {k: v / k for k, v in costs.items()}
        calls = " / ".join(f"{v:.3f}" for v in costs.values())
        rows = " / ".join(str(k) for k in costs)
        saves = per_row[min(per_row)] / per_row[max(per_row)]
        lines.append(
            f"   in-process ms per call at {rows} rows: {calls}  (per row: "
            + " / ".join(f"{v:.4f}" for v in per_row.values())
            + f"): batching saves at most {saves:.1f}x per row"
        )
    for j in limit.get("json", {}).values():
        lines.append(f"   in-process with JSON, {j['body']}: {j['calls_per_s']:,.0f} calls/s")
    if batching:
        lines.append(
            f"   batching: max_batch_size {batching['max_batch_size']}, max_latency_ms "
            f"{batching['max_latency_ms']} (from {', '.join(set(batching['from'].values()))})"
        )
    return lines


def table(rows: list[Row], checks: list[dict], meta: dict, models: dict[str, dict]) -> str:
    lines = [
        f"BentoML ONNX bench  {meta['when']}  cpus={meta['cpus']}  "
        f"load avg at start {meta['loadavg_start']}  duration {meta['duration']} s/case"
        + ("  [SMOKE]" if meta["smoke"] else ""),
        "server pinned to cpu 0 and one worker unless the case says; load generator on cpu 1; "
        "rows/s = rows answered (503s not counted); 503 = refused; srv%/gen% = CPU of each "
        "side (100 = one core); us/req = server CPU per request; xlimit = rows/s against the "
        "in-process limit with JSON for the same body; xbase = against the FastAPI baseline; "
        "! = wrk's latencies add up to more than wall time x connections (trust python's)",
    ]
    for model, info in models.items():
        lines += ["", *model_header(model, info["about"], info["limit"], info["batching"])]
        lines += [HEAD, "-" * len(HEAD)]
        for r in rows:
            if r.model != model:
                continue
            lines.append(_line(r))
            if r.case.startswith("/predict_file"):
                lines.append(
                    f"{'':<26} {r.extra['rows']:,} rows ({r.extra['file_mb']:.0f} MB CSV) in "
                    f"{r.seconds:.2f} s; server RSS {r.extra['rss_before_mb']:.0f} MB, "
                    f"peak growth +{r.extra['rss_growth_mb']:.1f} MB"
                )
    lines += ["", "Targets"] + [f"{c['status']:<4}  {c['target']}: {c['detail']}" for c in checks]
    return "\n".join(lines)
