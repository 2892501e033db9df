"""Batch inference on Spark: a table in, the same rows plus the model's predictions out.

    python -m onnx_serving.offline.spark --input PATH --output PATH [--model TAG] \
        [--master local[2]]
    spark-submit --py-files onnx_serving.zip onnx_serving/offline/spark.py --input ... --output ...

The model is the service's own: loaded by tag from the BentoML store on the driver, its
SHA-256 checked against the stored metadata (model/store.get_verified), shipped to the
executors with SparkContext.addFile and checked again there. An iterator pandas_udf runs
it through ONNX Runtime with the service's runner (runner.LoadedModel), one session per
Python worker (cached here, at module level) with one intra-op thread, as every task gets
one core. Columns follow /predict_file's rule (protocols/files.py): the signature's `columns`
feed the inputs in order, and the output columns are named as /predict_file names them.
CSV is read as text and parsed as the service parses it; CSV output writes predictions as
the service writes them. Output goes to a temporary directory beside PATH, renamed to PATH
only when every task succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from onnx_serving.model.signature import Signature
from onnx_serving.model.store import ModelIntegrityError, sha256_file
from onnx_serving.model.tensors import InvalidInput

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from onnx_serving.model.runner import LoadedModel

# Per Python worker (Spark reuses workers between tasks): the open sessions, by file.
_SESSIONS: dict[tuple[str, str], LoadedModel] = {}
KINDS = {"f": "a number", "i": "an integer", "u": "an integer", "b": "true/false"}


class SparkJobError(RuntimeError):
    """The job can't run or failed; the message says why, without a JVM stack trace."""


@dataclass(frozen=True)
class ShippedModel:
    """What the executors need of the model: small, pickled into the UDF."""

    tag: str
    path: str  # on the driver: the verified file, under a name unique to its content
    sha256: str
    signature: dict[str, Any]

    @property
    def file_name(self) -> str:
        return Path(self.path).name

    @property
    def sig(self) -> Signature:
        return Signature.from_metadata(self.signature)


def prepare(tag: str) -> ShippedModel:
    """Driver side: the stored model, verified; ModelIntegrityError if its hash is wrong."""
    from onnx_serving.config import settings
    from onnx_serving.model import signing
    from onnx_serving.model import store as model_store

    stored = model_store.get_verified(tag)
    sha = stored.info.metadata["sha256"]
    if settings().verify_keys:  # MODEL_VERIFY_KEY: signed, or the job doesn't start
        who = signing.verify(Path(stored.path), settings().verify_keys, str(stored.tag))
        # The executors check the shipped file against the digest the signature lists.
        sha = who["files"][model_store.ONNX_FILENAME]
    # Named by content: two models in one Spark session don't collide in SparkFiles.
    path = Path(tempfile.gettempdir()) / "onnx_serving-spark" / f"{sha}.onnx"
    if not path.exists() or sha256_file(path) != sha:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}")
        shutil.copyfile(stored.path_of(model_store.ONNX_FILENAME), tmp)
        tmp.replace(path)
    sig = model_store.signature_of(stored)
    return ShippedModel(str(stored.tag), str(path), sha, sig.to_metadata())


def _session(model: ShippedModel) -> LoadedModel:
    """Executor side: the shipped file, checked again, opened once per Python worker."""
    key = (model.file_name, model.sha256)
    if key not in _SESSIONS:
        import onnxruntime as ort
        from pyspark import SparkFiles

        from onnx_serving.model.runner import LoadedModel, session_options

        path = SparkFiles.get(model.file_name)
        if (actual := sha256_file(path)) != model.sha256:
            raise ModelIntegrityError(
                f"refusing to run {model.tag}: the shipped {path} has SHA-256 {actual}, "
                f"the model store recorded {model.sha256}"
            )
        # session_options() without settings: one intra-op thread, as a task has one core.
        session = ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])
        _SESSIONS[key] = LoadedModel(model.tag, session, model.sig, {})
    return _SESSIONS[key]


def _values(column: pd.Series, dtype: np.dtype, name: str) -> np.ndarray:
    """One column as the input's type: text parsed as /predict_file parses CSV fields."""
    from onnx_serving.protocols.files import _convert

    if column.dtype != object:  # typed (Parquet): numbers are checked by check_values
        return column.to_numpy()
    field = np.char.encode(column.fillna("").to_numpy(dtype=str), "utf-8")
    try:
        return _convert(field, dtype)
    except (ValueError, OverflowError):
        pass
    for value in field.tolist():  # slow path, only for a batch with a bad value: find it
        try:
            _convert(np.array([value]), dtype)
        except (ValueError, OverflowError):
            text = value.decode("utf-8", "replace")[:40]
            raise InvalidInput(f"column {name}: {text!r} is not {KINDS[dtype.kind]}") from None
    raise InvalidInput(f"column {name} holds a value that is not {KINDS[dtype.kind]}")


def predict_batch(model: ShippedModel, columns: list[pd.Series], text: bool) -> pd.DataFrame:
    """The predictions for one Arrow batch of the model's columns, a column per output value."""
    from onnx_serving.model.tensors import check_values
    from onnx_serving.protocols.files import NO_LIMIT, _cells
    from onnx_serving.protocols.native import check_feeds

    loaded = _session(model)
    sig = loaded.signature
    fields, names, arrays = iter(columns), iter(sig.columns), {}
    for spec in sig.inputs:  # the same steps as batch_files._predict_csv
        width = spec.width if spec.rank == 2 else 1
        parts = [_values(next(fields), spec.dtype, next(names)) for _ in range(width)]
        values = np.stack(parts, axis=1)
        arrays[spec.name] = check_values(values, spec.dtype, spec.name, sig.allow_nan)
    result = loaded.run(check_feeds(sig, arrays, NO_LIMIT))
    out = {}
    for spec in sig.outputs:
        values = result[spec.name].reshape(len(columns[0]), -1)
        if text and values.dtype.kind == "O":
            cells = [[str(v) for v in col] for col in values.T]  # Spark's writer quotes them
        elif text:  # as the service writes CSV: %.9g for float32, true/false...
            cells = [[cell.decode() for cell in col] for col in _cells(values)]
        else:
            cells = list(values.astype(_numpy_type(values.dtype)).T)
        out.update(zip(sig.output_columns(spec), cells, strict=True))
    return pd.DataFrame(out)


def _numpy_type(dtype: np.dtype) -> Any:
    # Spark has no float16 and no unsigned types: the nearest that holds every value.
    wider = {"e": np.float32, "B": np.int16, "H": np.int32, "I": np.int64, "Q": str, "O": str}
    return wider.get(dtype.char, dtype)


def _spark_type(dtype: np.dtype) -> str:
    kind = np.dtype(_numpy_type(dtype))
    names = {"f4": "float", "f8": "double", "i1": "tinyint", "i2": "smallint", "i4": "int"}
    names |= {"i8": "bigint", "b1": "boolean"}
    return names.get(f"{kind.kind}{kind.itemsize}", "string")


def _predict_iter(
    model: ShippedModel, text: bool, batches: Iterator[Any]
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        yield predict_batch(model, list(batch) if isinstance(batch, tuple) else [batch], text)


def with_predictions(df: DataFrame, model: ShippedModel, text: bool) -> DataFrame:
    """`df` plus the prediction columns; the column rule checked before any task runs."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, MapType, StructType

    sig = model.sig
    if sig.batch == "none" or not sig.columns:
        shapes = {s.name: list(s.shape) for s in sig.inputs}
        raise SparkJobError(f"table columns can't feed this model's inputs {shapes}")
    by_name = {c.strip(): c for c in df.columns}
    missing = [c for c in sig.columns if c not in by_name]
    if missing:
        raise SparkJobError(f"the input has no {missing} column(s) (it has {df.columns})")
    try:
        added = {c: s.dtype for s in sig.outputs for c in sig.output_columns(s)}
    except ValueError as exc:
        raise SparkJobError(str(exc)) from None
    if clash := [c for c in added if c in by_name]:
        raise SparkJobError(f"the input already has the output column(s) {clash}")
    for c in sig.columns:
        if isinstance(df.schema[by_name[c]].dataType, ArrayType | MapType | StructType):
            raise SparkJobError(f"column {c} is {df.schema[by_name[c]].dataType.simpleString()}")
    schema = ", ".join(f"`{c}` {'string' if text else _spark_type(t)}" for c, t in added.items())

    # The iterator form: _session runs once per task, not once per batch.
    def predict(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        return _predict_iter(model, text, batches)

    def predict_one(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return _predict_iter(model, text, batches)

    udf = pandas_udf(predict if len(sig.columns) > 1 else predict_one, schema)  # type: ignore
    pred = "__predictions__"
    out = df.withColumn(pred, udf(*(F.col(f"`{by_name[c]}`") for c in sig.columns)))
    return out.select(*(F.col(f"`{c}`") for c in df.columns), f"{pred}.*")


def spark_session(
    master: str | None, batch_rows: int = 65_536, progress: bool = True
) -> SparkSession:
    """A SparkSession: spark-submit's, else one of our own (default local[*]). A local one
    listens on 127.0.0.1 only; no web UI either way; `progress`: Spark's console bar."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started us, and its JVM
    if submitted and not master:
        SparkContext._ensure_initialized()  # attach to that JVM to read its --master
        master = SparkConf().get("spark.master", None)
    master = master or "local[*]"
    builder = SparkSession.builder.appName("onnx_serving.offline.spark").master(master)
    if master.startswith("local"):
        if not submitted:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # read when the JVM starts
        builder = builder.config("spark.driver.host", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
        # The Python workers need this interpreter (its onnxruntime and onnx_serving);
        # PySpark reads the variable itself, when the SparkContext starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.config("spark.ui.enabled", "false")
    builder = builder.config("spark.ui.showConsoleProgress", str(progress).lower())
    # Rows per Arrow batch, so per ONNX Runtime call: fewer, larger calls.
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    return builder.getOrCreate()


def input_format(path: str) -> str:
    name = path.rstrip("/").lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    local = Path(path)
    return "csv" if local.is_dir() and any(local.glob("*.csv*")) else "parquet"


def run(
    spark: SparkSession,
    model: ShippedModel,
    source: str,
    dest: str,
    fmt: str | None = None,
    out_fmt: str | None = None,
    overwrite: bool = False,
) -> None:
    """Read `source`, add the predictions, write `dest`, all or nothing."""
    fmt = fmt or input_format(source)
    out_fmt = out_fmt or fmt
    csv = {"header": "true", "escape": '"'}  # RFC 4180 quotes, as /predict_file reads them
    reader = spark.read.options(**csv) if fmt == "csv" else spark.read
    try:
        df = reader.format(fmt).load(source)  # CSV: every column text, kept exactly as it was
    except Exception as exc:  # no such path, not Parquet...
        raise SparkJobError(_reason(exc)) from None
    out = with_predictions(df, model, text=out_fmt == "csv")
    spark.sparkContext.addFile(model.path)
    jvm, conf = spark._jvm, spark._jsc.hadoopConfiguration()  # Hadoop's FS: local, HDFS, S3...
    final = jvm.org.apache.hadoop.fs.Path(dest)
    fs = final.getFileSystem(conf)
    if fs.exists(final) and not overwrite:
        raise SparkJobError(f"{dest} exists; pass --overwrite to replace it")
    tmp = jvm.org.apache.hadoop.fs.Path(f"{dest.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        writer = out.write.options(**csv) if out_fmt == "csv" else out.write
        writer.format(out_fmt).save(tmp.toString())
    except Exception as exc:
        fs.delete(tmp, True)
        raise SparkJobError(_reason(exc)) from None
    if fs.exists(final):
        fs.delete(final, True)
    if not fs.rename(tmp, final):
        raise SparkJobError(f"could not rename {tmp.toString()} to {dest}")


def _reason(exc: Exception) -> str:
    """The Python error behind a failed Spark job (its last line), else Spark's message."""
    found = re.findall(r"(?:InvalidInput|ModelIntegrityError): (.+)", str(exc))
    return found[-1].strip() if found else str(exc).strip().splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onnx_serving.offline.spark", description=__doc__)
    p.add_argument("--input", required=True, help="Parquet or CSV (a file or a directory)")
    p.add_argument("--output", required=True, help="a directory, written all or nothing")
    p.add_argument("--model", help="NAME:VERSION or NAME (its latest); default: the service's")
    p.add_argument("--master", help="e.g. local[2]; default: spark-submit's, else local[*]")
    p.add_argument("--format", choices=["parquet", "csv"], help="input; default: by its name")
    p.add_argument("--output-format", choices=["parquet", "csv"], help="default: the input's")
    p.add_argument("--batch-rows", type=int, default=65_536, help="rows per ONNX Runtime call")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = p.parse_args(argv)
    from onnx_serving.config import settings
    from onnx_serving.model import signing
    from onnx_serving.model import store as model_store

    model_store.use_project_store()  # the store `make serve` serves from, in a checkout
    try:
        model = prepare(args.model or settings().model_ref)  # verified before Spark starts
        spark = spark_session(args.master, args.batch_rows)
        try:
            run(spark, model, args.input, args.output, args.format, args.output_format,
                args.overwrite)  # fmt: skip
        finally:
            spark.stop()
    except (
        SparkJobError,
        model_store.ModelNotFound,
        ModelIntegrityError,
        signing.SigningError,
    ) as exc:
        print(f"spark_infer: {exc}", file=sys.stderr)
        return 1
    print(f"spark_infer: {args.input} -> {args.output} ({model.tag})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Through the importable module, not __main__: the UDF and the session cache must be
    # found by name on the executors.
    from onnx_serving.offline import spark as spark_infer

    sys.exit(spark_infer.main())
