"""`python -m onnx_serving COMMAND`: the project's user tools.

    predict-file IN OUT --url URL   a big CSV or .npy through a running service's /predict_file

(The Spark job is its own module: `python -m onnx_serving.offline.spark`, see README.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m onnx_serving", description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True)
    pf = commands.add_parser(
        "predict-file",
        help="send a big CSV or .npy through /predict_file in chunks, with retries and resume",
        description="Writes OUT only when every chunk succeeded; OUT.part and OUT.part.json "
        "hold a run's progress, and the same command resumes it.",
    )
    pf.add_argument("input", type=Path, help="a CSV with the model's columns, or a .npy")
    pf.add_argument("output", type=Path, help="the CSV (or .npy / .npz) of predictions")
    pf.add_argument("--url", default="http://127.0.0.1:3000", help="the service (%(default)s)")
    pf.add_argument("--chunk-rows", type=int, default=100_000, help="rows per request")
    pf.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    pf.add_argument("--retries", type=int, default=10, help="attempts per request")
    pf.add_argument("--max-backoff", type=float, default=30.0, help="longest wait, seconds")
    pf.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    pf.add_argument("--restart", action="store_true", help="ignore a previous run's progress")
    pf.add_argument("--no-progress", action="store_true", help="no progress bar")
    pf.add_argument(
        "--api-key",
        default=os.environ.get("ONNX_SERVING_API_KEY"),
        help="sent as a Bearer token (default: $ONNX_SERVING_API_KEY)",
    )
    args = p.parse_args(argv)
    if args.chunk_rows < 1 or args.concurrency < 1 or args.retries < 1:
        p.error("--chunk-rows, --concurrency and --retries must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        from onnx_serving.offline.client import BatchError, Retry, predict_file
    except ImportError as exc:  # the client extra: make venv, or pip install -e '.[client]'
        print(
            f"error: the batch client needs {exc.name}: pip install -e '.[client]' "
            "(make venv installs it)",
            file=sys.stderr,
        )
        return 2

    try:
        rows = predict_file(
            args.input,
            args.output,
            args.url,
            chunk_rows=args.chunk_rows,
            concurrency=args.concurrency,
            retry=Retry(attempts=args.retries, cap_s=args.max_backoff),
            timeout_s=args.timeout,
            api_key=args.api_key,
            restart=args.restart,
            progress=not args.no_progress,
        )
    except (BatchError, OSError, ValueError) as exc:
        print(f"predict-file: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("predict-file: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{rows} rows -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
