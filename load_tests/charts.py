"""Draw PNG charts from Locust's CSV history (`--csv PREFIX --csv-full-history`).

    python load_tests/charts.py reports/load/<run>/locust_stats_history.csv [--out DIR]

Writes throughput.png (requests/s, failures/s and users over time) and latency.png
(p50/p95/p99 over time) for the aggregated row. Locust's history percentiles cover
a rolling window of the last ~10 s, so the lines show how latency moved during the run.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # "N/A" before the first response


def read_history(path: Path) -> dict[str, list[float | None]]:
    """Columns of the "Aggregated" rows, with time in seconds since the first row."""
    columns = ("User Count", "Requests/s", "Failures/s", "50%", "95%", "99%")
    series: dict[str, list[float | None]] = {"t": [], **{c: [] for c in columns}}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        raise SystemExit(f"{path}: no Aggregated rows (was the run empty?)")
    start = float(rows[0]["Timestamp"])
    for row in rows:
        series["t"].append(float(row["Timestamp"]) - start)
        for c in columns:
            series[c].append(_number(row[c]))
    return series


def draw(history: Path, out_dir: Path) -> list[Path]:
    s = read_history(history)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = history.parent.name

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(s["t"], s["Requests/s"], label="requests/s", color="tab:blue")
    ax.plot(s["t"], s["Failures/s"], label="failures/s", color="tab:red")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests per second")
    users = ax.twinx()
    users.plot(s["t"], s["User Count"], label="users", color="tab:gray", linestyle="--")
    users.set_ylabel("users")
    lines = ax.get_legend_handles_labels()
    more = users.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    ax.set_title(f"Throughput - {title}")
    ax.grid(alpha=0.3)
    throughput = out_dir / "throughput.png"
    fig.tight_layout()
    fig.savefig(throughput, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    for column, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        ax.plot(s["t"], [v if v is not None else float("nan") for v in s[column]], label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("response time (ms)")
    ax.set_title(f"Response time percentiles (rolling ~10 s) - {title}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    latency = out_dir / "latency.png"
    fig.tight_layout()
    fig.savefig(latency, dpi=100)
    plt.close(fig)
    return [throughput, latency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path, help="the *_stats_history.csv file")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: the CSV's)")
    args = parser.parse_args()
    for path in draw(args.history, args.out or args.history.parent):
        print(f"chart: {path}")


if __name__ == "__main__":
    main()
