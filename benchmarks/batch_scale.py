"""`make bench-batch`: rows/s of batch inference at 1 M and 10 M rows, every path side by side.

    python -m benchmarks.batch_scale [--rows 1000000,10000000] [--paths ort,file,client,spark]

In-process ONNX Runtime (the limit: session.run on float32 arrays, 65,536 rows a call; and
/predict_file's own code on the CSV, without HTTP), /predict_file (one upload to a
2-worker server), the batch client (100,000-row chunks, 2 in flight) and Spark local[2]
(Parquet and CSV, each timed warm: the JVM and the Python workers already up, as in a long
job; and Parquet into Spark's no-op sink: the model alone). Wall clock on both cores, the
demo model and the same one-column CSV everywhere. Prints a table and writes
reports/bench/batch-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.bodies import make_csv
from benchmarks.cases import upload_file
from benchmarks.servers import ALL_CPUS, ROOT, start_bentoml

MODEL = "linear-2x"
PATHS = "ort,file,client,spark"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_ort(sizes: list[int], csvs: dict[int, Path], tmp: Path) -> dict[str, dict[int, float]]:
    from onnx_serving.config import Settings
    from onnx_serving.model import store as model_store
    from onnx_serving.model.runner import ModelRunner
    from onnx_serving.protocols.files import predict_file

    stored = model_store.get_verified(f"{MODEL}:latest")
    sig = model_store.signature_of(stored)
    model = ModelRunner(Settings()).load(stored, sig)
    (name,) = [s.name for s in sig.inputs]
    out: dict[str, dict[int, float]] = {"in-process ONNX Runtime": {}, "in-process CSV code": {}}
    for n in sizes:
        x = np.random.default_rng(0).uniform(-1000, 1000, (n, 1)).astype(np.float32)
        step = 65_536
        runs = [x[i : i + step] for i in range(0, n, step)]
        wall = timed(lambda runs=runs: [model.session.run(None, {name: r}) for r in runs])
        out["in-process ONNX Runtime"][n] = n / wall
        dest = tmp / f"inproc-{n}"
        dest.mkdir()
        wall = timed(lambda n=n, dest=dest: predict_file(csvs[n], dest, sig, model.run, 262_144))
        out["in-process CSV code"][n] = n / wall
    return out


def bench_http(sizes: list[int], csvs: dict[int, Path], tmp: Path) -> dict[str, dict[int, float]]:
    from onnx_serving.offline import client as batch_client

    out: dict[str, dict[int, float]] = {"/predict_file (1 upload)": {}, "batch client": {}}
    server = start_bentoml("batch-scale", tmp, ALL_CPUS, {"MODEL_NAME": MODEL, "WORKERS": "2"})
    try:
        for n in sizes:
            status = 0

            def upload(n: int = n) -> None:
                nonlocal status
                status, _ = upload_file(server.port, csvs[n])

            out["/predict_file (1 upload)"][n] = n / timed(upload)
            assert status == 200, f"/predict_file answered {status}"
            dest = tmp / f"client-{n}.csv"
            wall = timed(
                lambda n=n, dest=dest: batch_client.predict_file(
                    csvs[n], dest, server.url, chunk_rows=100_000, concurrency=2, progress=False
                )
            )
            out["batch client"][n] = n / wall
    finally:
        server.stop()
    return out


def bench_spark(sizes: list[int], csvs: dict[int, Path], tmp: Path) -> dict[str, dict[int, float]]:
    from onnx_serving.offline import spark as spark_infer

    model = spark_infer.prepare(f"{MODEL}:latest")
    spark = spark_infer.spark_session("local[2]", progress=False)
    spark.sparkContext.setLogLevel("ERROR")
    out: dict[str, dict[int, float]] = {"Spark local[2], Parquet": {}, "Spark local[2], CSV": {}}
    try:
        for n in sizes:
            parquet = tmp / f"in-{n}.parquet"
            table = spark.range(n, numPartitions=max(2, n // 2_500_000))
            table.selectExpr("id", "cast(rand(0) * 2000 - 1000 as float) x").write.parquet(
                str(parquet)
            )
        # Warm-up: the Python workers start and open their sessions once, as in a long job.
        spark_infer.run(spark, model, str(tmp / f"in-{sizes[0]}.parquet"), str(tmp / "warm"))
        for n in sizes:
            for fmt, src in (("Parquet", tmp / f"in-{n}.parquet"), ("CSV", csvs[n])):
                dest = str(tmp / f"spark-{fmt}-{n}")
                wall = timed(lambda s=str(src), d=dest: spark_infer.run(spark, model, s, d))
                out[f"Spark local[2], {fmt}"][n] = n / wall
            # The model alone: Parquet read and predictions made, nothing written.
            df = spark_infer.with_predictions(spark.read.parquet(str(tmp / f"in-{n}.parquet")),
                                              model, text=False)  # fmt: skip
            wall = timed(lambda df=df: df.write.format("noop").mode("overwrite").save())
            out.setdefault("Spark local[2], no output", {})[n] = n / wall
    finally:
        spark.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=os.environ.get("BATCH_ROWS") or "1000000,10000000")
    p.add_argument("--paths", default=os.environ.get("BATCH_PATHS") or PATHS)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.rows.split(","))
    paths = set(args.paths.split(","))
    os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    started = time.monotonic()
    results: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="batch-scale-") as d:
        tmp = Path(d)
        csvs = {n: tmp / f"rows-{n}.csv" for n in sizes}
        for n, path in csvs.items():
            make_csv(path, n)
        for name, bench in (("ort", bench_ort), ("file", bench_http), ("spark", bench_spark)):
            if name in paths or (name == "file" and "client" in paths):
                print(f"batch_scale: {name}...", flush=True)
                results |= bench(sizes, csvs, tmp)
    print(f"\n== batch inference at scale: {MODEL}, rows/s (wall clock, {len(ALL_CPUS)} cores, "
          f"load {os.getloadavg()[0]:.1f})")  # fmt: skip
    print(f"{'path':<28}" + "".join(f"{n:>14,}" for n in sizes))
    for path, by_size in results.items():
        print(f"{path:<28}" + "".join(f"{by_size.get(n, 0):>14,.0f}" for n in sizes))
    minutes = (time.monotonic() - started) / 60
    print(f"{minutes:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_text(json.dumps({"rows_per_s": results, "minutes": round(minutes, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
