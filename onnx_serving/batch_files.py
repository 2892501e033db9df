"""Batch inference on large files, in bounded chunks so memory stays flat.

A CSV with an `x` column comes back as the same CSV plus a `y` column; a `.npy`
of floats comes back as a `.npy` of predictions. Both are read from disk and
written to disk one chunk at a time: memory is O(chunk), not O(file).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .validation import InvalidInput, check_float32

logger = logging.getLogger("onnx_serving")

NPY_MAGIC = b"\x93NUMPY"
Predict = Callable[[np.ndarray], np.ndarray]


def spool_upload(value: Any, handler: Callable[[Any], Path]) -> Path:
    """Pydantic wrap-validator for file fields: copy an upload to disk in blocks.

    BentoML's own file decoding reads the whole upload into memory first; for a
    10-million-row file that is hundreds of MB. Starlette has already spooled the
    upload to a temporary file, so copy it across in 1 MiB blocks instead.
    """
    from bentoml._internal.context import request_temp_dir
    from starlette.datastructures import UploadFile

    if not isinstance(value, UploadFile):
        return handler(value)
    suffix = Path(value.filename or "upload").suffix
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=request_temp_dir(), delete=False) as out:
        value.file.seek(0)
        shutil.copyfileobj(value.file, out, 1 << 20)
    return Path(out.name)


def predict_file(src: Path, dest_dir: Path, predict: Predict, chunk_rows: int) -> Path:
    """Run every row of `src` through `predict`; return the path of the result file."""
    with open(src, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if not head:
        raise InvalidInput("the uploaded file is empty")
    started = time.perf_counter()
    if head == NPY_MAGIC:
        out, rows = _predict_npy(src, dest_dir / "predictions.npy", predict, chunk_rows)
    else:
        out, rows = _predict_csv(src, dest_dir / "predictions.csv", predict, chunk_rows)
    elapsed = time.perf_counter() - started
    logger.info("predict_file: %d rows in %.2f s (%.0f rows/s)", rows, elapsed, rows / elapsed)
    return out


# --- .npy -------------------------------------------------------------------------------------


def _predict_npy(src: Path, dest: Path, predict: Predict, chunk_rows: int) -> tuple[Path, int]:
    try:
        # Memory-mapped: only the chunk being read is paged in.
        data = np.load(src, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InvalidInput(f"not a readable .npy file: {exc}") from None
    if data.dtype.kind != "f":
        raise InvalidInput(f"the .npy file must hold floats, it holds {data.dtype}")
    if data.ndim not in (1, 2):
        raise InvalidInput(f"the .npy array must be [rows] or [rows, features], not {data.shape}")
    if data.shape[0] == 0:
        raise InvalidInput("the .npy array has no rows")
    rows = data.shape[0]
    out: np.memmap | None = None
    for start in range(0, rows, chunk_rows):
        chunk = np.asarray(data[start : start + chunk_rows], dtype=np.float64)
        x = check_float32(chunk.reshape(len(chunk), -1), name="row", first_row=start)
        y = predict(x)
        y = y.reshape(len(y)) if y.ndim == 2 and y.shape[1] == 1 else y
        if out is None:
            out = np.lib.format.open_memmap(
                dest, mode="w+", dtype=np.float32, shape=(rows, *y.shape[1:])
            )
        out[start : start + len(y)] = y
    assert out is not None
    out.flush()
    del out
    return dest, rows


# --- CSV --------------------------------------------------------------------------------------


def _read_header(f: BinaryIO) -> tuple[bytes, list[str]]:
    line = f.readline()
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the file is neither a .npy file nor UTF-8 CSV text") from None
    columns = next(csv.reader([text]), [])
    if not columns or not text.strip():
        raise InvalidInput("the CSV has no header line; it needs one with an 'x' column")
    return line.rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf"), [c.strip() for c in columns]


def _lines(f: BinaryIO, chunk_rows: int) -> Iterator[list[bytes]]:
    """Chunks of up to `chunk_rows` non-blank lines."""
    while chunk := list(itertools.islice(f, chunk_rows)):
        if chunk := [ln for ln in chunk if ln.strip()]:
            yield chunk


def _x_values(lines: list[bytes], col: int, ncols: int, first_line: int) -> np.ndarray:
    """The `x` field of each line as float64, parsed by NumPy when no quoting is involved."""
    try:
        if any(b'"' in ln for ln in lines):
            raise ValueError("quoted fields")
        if col == 0:
            fields = [ln.split(b",", 1)[0] for ln in lines]
        else:
            fields = [ln.split(b",", col + 1)[col] for ln in lines]
        return np.array(fields).astype(np.float64)
    except (ValueError, IndexError):
        pass
    # Slow path, only for chunks with quotes or a bad value: find and name the culprit.
    values = np.empty(len(lines), dtype=np.float64)
    text = io.StringIO(b"".join(lines).decode("utf-8", errors="replace"))
    for i, row in enumerate(csv.reader(text)):
        lineno = first_line + i
        if len(row) != ncols:
            raise InvalidInput(f"CSV line {lineno} has {len(row)} fields, the header has {ncols}")
        try:
            values[i] = float(row[col])
        except ValueError:
            raise InvalidInput(
                f"CSV line {lineno}: x = {row[col][:40]!r} is not a number"
            ) from None
    return values


def _predict_csv(src: Path, dest: Path, predict: Predict, chunk_rows: int) -> tuple[Path, int]:
    rows = 0
    with open(src, "rb") as f, open(dest, "wb") as out:
        header, columns = _read_header(f)
        if "x" not in columns:
            raise InvalidInput(f"the CSV header has no 'x' column (it has {columns})")
        if "y" in columns:
            raise InvalidInput("the CSV already has a 'y' column; rename it so predictions fit")
        col, ncols = columns.index("x"), len(columns)
        out.write(header + b",y\n")
        for lines in _lines(f, chunk_rows):
            x = _x_values(lines, col, ncols, first_line=rows + 2)
            x32 = check_float32(x.reshape(-1, 1), name="CSV row", first_row=rows + 1)
            y = predict(x32).reshape(len(lines), -1)
            if y.shape[1] != 1:
                raise InvalidInput("CSV output needs a model with one output value per row")
            # %.9g: the fewest digits that always read back as the same float32, and one
            # formatting step per row (about twice as fast as NumPy's shortest-repr astype).
            out.writelines(
                b"%s,%.9g\n" % (ln.rstrip(b"\r\n"), v)
                for ln, v in zip(lines, y[:, 0].tolist(), strict=True)
            )
            rows += len(lines)
    if rows == 0:
        raise InvalidInput("the CSV has a header but no rows")
    return dest, rows
