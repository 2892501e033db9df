"""Batch inference on large files, in bounded chunks so memory stays flat.

CSV: the columns named in the model's signature (`columns`: `x` for the demo, the names
given with --features, else x_0.. or <input>_0..) feed the inputs in order; the same CSV
comes back with one column per output value (`y`, or <output>[_i], or <output>_<class>).
`.npy` (one-input models): the array is the input, [rows, ...]; the result is a `.npy` of
the output, or an `.npz` with one array per output. Read and written one chunk at a time:
memory is O(chunk), not O(file).
"""

from __future__ import annotations

import csv
import io
import logging
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import bentoml
import numpy as np
from pydantic import ValidationError, WrapValidator

from onnx_serving import errors
from onnx_serving.model.feeds import Feeds
from onnx_serving.model.signature import Signature
from onnx_serving.model.tensors import InvalidInput, check_values, type_name
from onnx_serving.protocols.native import check_feeds

logger = logging.getLogger("onnx_serving")

NPY_MAGIC = b"\x93NUMPY"
NO_LIMIT = 1 << 62  # chunks are bounded by FILE_CHUNK_ROWS, not MAX_VALUES
MAX_LINE = 1 << 20  # MAX_CSV_LINE_BYTES' default
# CSV is read in blocks of this many bytes (whole lines, at most FILE_CHUNK_ROWS of them): the
# text and cells of one block are all a request holds, however its lines are shaped.
BLOCK_BYTES = 4 << 20
Run = Callable[[Feeds], dict[str, np.ndarray]]
# Floats with the fewest digits that always read back as the same value.
FLOAT_FORMATS = {np.dtype(np.float16): b"%.5g", np.dtype(np.float32): b"%.9g"}


def spool_upload(value: Any, handler: Callable[[Any], Path]) -> Path:
    """Pydantic wrap-validator for file fields: the upload, read where it already is.

    BentoML's own file decoding reads the whole upload into memory first; for a
    10-million-row file that is hundreds of MB. Starlette's multipart parser has already
    written the upload to a temporary file (kept in memory up to 1 MiB): make sure it is on
    disk, and hand on that file itself (its descriptor's path), so the upload touches the
    disk once. It is closed, and so gone, when the request ends.
    """
    from starlette.datastructures import UploadFile

    if not isinstance(value, UploadFile):
        return handler(value)
    spooled = value.file
    if hasattr(spooled, "rollover"):  # a SpooledTemporaryFile: to disk, if not there yet
        spooled.rollover()
    spooled.flush()
    return Path(f"/proc/self/fd/{spooled.fileno()}")


class FileRequest(bentoml.IODescriptor):
    """/predict_file's body: one uploaded file, spooled to disk by `spool_upload`."""

    file: Annotated[Path, WrapValidator(spool_upload)]

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> bentoml.IODescriptor:
        # Starlette reports a malformed multipart body as an HTTPException(400) (or a
        # MultiPartException), which BentoML 1.4.39 answers with a 500: make it the 400
        # validation error it is.
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
        from starlette.formparsers import MultiPartException

        try:
            # A form field without a filename is a string, which BentoML's file decoding
            # takes for a URL and downloads, whole, into memory (_bentoml_impl/serde.py,
            # ensure_file): only uploads are taken. (Starlette keeps the parsed form, so
            # BentoML's own `request.form()` reads this one.)
            form = await request.form()
            if any(not isinstance(v, UploadFile) for v in form.getlist("file")):
                raise _invalid(
                    "file must be an uploaded file (a part with a filename); URLs and plain "
                    "fields are not taken"
                )
            return await super().from_http_request(request, serde)
        except (MultiPartException, HTTPException) as exc:
            reason = getattr(exc, "detail", None) or getattr(exc, "message", str(exc))
            raise _invalid(f"not a readable multipart body: {reason}") from None


def _invalid(message: str) -> ValidationError:
    """A 400 from BentoML's validation handling, for the file field."""
    error = {"type": "value_error", "loc": ("file",), "input": None}
    error["ctx"] = {"error": ValueError(message)}
    return ValidationError.from_exception_data("FileRequest", [error])


def predict_file(
    src: Path,
    dest_dir: Path,
    sig: Signature,
    run: Run,
    chunk_rows: int,
    max_line: int = MAX_LINE,
) -> tuple[Path, int]:
    """Run every row of `src` through the model; the path of the result file, and its rows.
    CSV lines longer than `max_line` bytes (MAX_CSV_LINE_BYTES) are refused as they are read."""
    if sig.batch == "none":
        raise InvalidInput(
            f"files are read in rows, and this model has none: {sig.batching_note()}"
        )
    with open(src, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if not head:
        raise InvalidInput("the uploaded file is empty")
    started = time.perf_counter()
    if head == NPY_MAGIC:
        out, rows = _predict_npy(src, dest_dir, sig, run, chunk_rows)
    else:
        out, rows = _predict_csv(src, dest_dir / "predictions.csv", sig, run, chunk_rows, max_line)
    elapsed = time.perf_counter() - started
    logger.info("predict_file: %d rows in %.2f s (%.0f rows/s)", rows, elapsed, rows / elapsed)
    return out, rows


# --- .npy -------------------------------------------------------------------------------------

KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "U"}


def _predict_npy(
    src: Path, dest_dir: Path, sig: Signature, run: Run, chunk_rows: int
) -> tuple[Path, int]:
    if not sig.single_input:
        raise InvalidInput(
            f"a .npy file feeds one input, the model takes {len(sig.inputs)}: send CSV"
        )
    (spec,) = sig.inputs
    try:
        # Memory-mapped: only the chunk being read is paged in.
        data = np.load(src, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InvalidInput(f"not a readable .npy file: {exc}") from None
    wanted = "floats" if spec.dtype.kind == "f" else type_name(spec.dtype)
    if data.dtype.kind not in KINDS[spec.dtype.kind] or (
        spec.dtype.kind == "f" and data.dtype.kind != "f"
    ):
        raise InvalidInput(f"the .npy file must hold {wanted}, it holds {data.dtype}")
    if data.ndim == 0 or data.shape[0] == 0:
        raise InvalidInput("the .npy array has no rows")
    rows = data.shape[0]
    outs: dict[str, np.memmap] = {}
    for start in range(0, rows, chunk_rows):
        chunk = np.asarray(data[start : start + chunk_rows])
        chunk = check_values(chunk, spec.dtype, "row", sig.allow_nan, first_row=start)
        result = run(check_feeds(sig, {spec.name: chunk}, NO_LIMIT))
        for output in sig.outputs:
            name, y = output.name, result[output.name]
            if output.is_column:
                y = y[:, 0]  # one value per row: a flat array, as in JSON
            if name not in outs:
                if y.dtype.kind == "O":
                    raise InvalidInput(f"output {name!r} holds strings, which .npy can't: send CSV")
                outs[name] = np.lib.format.open_memmap(
                    dest_dir / f"{name}.npy", mode="w+", dtype=y.dtype, shape=(rows, *y.shape[1:])
                )
            outs[name][start : start + len(y)] = y
    for out in outs.values():
        out.flush()
    paths = [Path(o.filename) for o in outs.values()]
    del outs
    if len(paths) == 1:
        return paths[0].rename(dest_dir / "predictions.npy"), rows
    # Several outputs: an .npz, which is a zip of .npy files named after them (np.load reads it).
    dest = dest_dir / "predictions.npz"
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for path in paths:
            z.write(path, path.name)
    return dest, rows


# --- CSV --------------------------------------------------------------------------------------


def _too_long(what: str, max_line: int) -> InvalidInput:
    return InvalidInput(
        f"{what} is longer than MAX_CSV_LINE_BYTES={max_line:,} bytes", status=413, reason="size"
    )


def read_csv_header(
    f: BinaryIO, sig: Signature, max_line: int = MAX_LINE
) -> tuple[bytes, list[str]]:
    """The header line and its columns, held to the column rule: the signature's `columns`
    feed the inputs, and every one of them must be there (InvalidInput says which is not)."""
    if not sig.columns:
        shapes = {s.name: list(s.shape) for s in sig.inputs}
        raise InvalidInput(f"CSV columns can't feed this model's inputs {shapes}: send .npy")
    line = f.readline(max_line + 1)
    if len(line) > max_line:
        raise _too_long("the CSV header line", max_line)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the file is neither a .npy file nor UTF-8 CSV text") from None
    try:
        columns = next(csv.reader([text]), [])
    except csv.Error as exc:  # a stray carriage return, say
        raise InvalidInput(f"the CSV header can't be read: {exc}") from None
    if not columns or not text.strip():
        raise InvalidInput(
            f"the CSV has no header line; it needs one with the column(s) {list(sig.columns)}"
        )
    columns = [c.strip() for c in columns]
    missing = [c for c in sig.columns if c not in columns]
    if missing:
        shown = [errors.safe(c, 40) for c in columns[:20]]
        more = f" and {len(columns) - 20} more" if len(columns) > 20 else ""
        raise InvalidInput(f"the CSV header has no {missing[:20]} column(s) (it has {shown}{more})")
    return line.rstrip(b"\r\n").removeprefix(b"\xef\xbb\xbf"), columns


def _lines(f: BinaryIO, chunk_rows: int, max_line: int) -> Iterator[list[bytes]]:
    """Chunks of up to `chunk_rows` non-blank lines (without their line ends), read in blocks
    of BLOCK_BYTES: a line longer than `max_line` is refused before it is split."""
    rest = b""
    while True:
        block = f.read(max(BLOCK_BYTES, max_line + 1))
        data = rest + block if rest else block
        if not data:
            return
        if block:
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line end yet
                if len(data) > max_line:
                    raise _too_long("a CSV line", max_line)
                rest = data
                continue
            data, rest = data[:cut], data[cut:]
        else:
            rest = b""  # the last line, without a line end
        lines = data.split(b"\n")
        if max(map(len, lines)) > max_line:
            raise _too_long("a CSV line", max_line)
        lines = [ln for ln in lines if ln.strip()]
        for start in range(0, len(lines), chunk_rows):
            yield lines[start : start + chunk_rows]


def _fields(lines: list[bytes], cols: list[int], ncols: int, first_line: int) -> list[np.ndarray]:
    """The wanted fields of each line, as arrays of bytes, one per column."""
    if not any(b'"' in ln for ln in lines):
        split = [ln.rstrip(b"\r\n").split(b",") for ln in lines]
        if all(len(row) == ncols for row in split):
            return [np.array([row[c] for row in split]) for c in cols]
    # Slow path, only for chunks with quotes or a ragged line: the csv module, and the culprit.
    text = io.StringIO(b"\n".join(lines).decode("utf-8", errors="replace"))
    rows = []
    reader = csv.reader(text)
    try:
        for i, row in enumerate(reader):
            if len(row) != ncols:
                raise InvalidInput(
                    f"CSV line {first_line + i} has {len(row)} fields, the header has {ncols}"
                )
            rows.append([row[c].encode() for c in cols])
    except csv.Error as exc:  # a stray carriage return, an unclosed quote...
        raise InvalidInput(f"CSV near line {first_line + reader.line_num}: {exc}") from None
    if len(rows) != len(lines):
        raise InvalidInput(
            f"CSV near line {first_line + len(rows)}: a quoted field holds a line break; "
            "/predict_file reads one row per line"
        )
    return [np.array([r[j] for r in rows]) for j in range(len(cols))]


def _convert(field: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Text as values of the input's type (floats as float64, checked later); ValueError if not."""
    if dtype.kind == "O":
        return np.char.decode(field, "utf-8").astype(object)
    if dtype.kind == "b":
        low = np.char.lower(np.char.strip(field))
        if not np.isin(low, [b"true", b"false", b"1", b"0"]).all():
            raise ValueError("not a boolean")
        return np.isin(low, [b"true", b"1"])
    return field.astype(np.float64 if dtype.kind == "f" else np.int64)


def _parse(field: np.ndarray, dtype: np.dtype, column: str, first_line: int) -> np.ndarray:
    """One column's text as values of the input's type; a bad value is named with its line."""
    try:
        return _convert(field, dtype)
    except (ValueError, OverflowError):
        pass
    # Slow path, only for a chunk with a bad value: find it.
    kind = "a number" if dtype.kind == "f" else "true/false" if dtype.kind == "b" else "an integer"
    for i, v in enumerate(field.tolist()):
        try:
            _convert(np.array([v]), dtype)
        except (ValueError, OverflowError):
            text = v.decode("utf-8", "replace")[:40]
            raise InvalidInput(
                f"CSV line {first_line + i}: {column} = {text!r} is not {kind}"
            ) from None
    raise InvalidInput(f"CSV: column {column} holds a value that is not {kind}")


def _cells(values: np.ndarray) -> list[list[bytes]]:
    """An output as CSV cells: one list per output column."""
    values = values.reshape(len(values), -1)
    fmt = FLOAT_FORMATS.get(values.dtype, b"%.17g" if values.dtype.kind == "f" else None)
    out = []
    for col in values.T:
        if fmt is not None:
            out.append([fmt % v for v in col.tolist()])
        elif values.dtype.kind == "O":
            out.append([_quote(str(v).encode()) for v in col.tolist()])
        elif values.dtype.kind == "b":
            out.append([b"true" if v else b"false" for v in col.tolist()])
        else:
            out.append([b"%d" % v for v in col.tolist()])
    return out


def _quote(cell: bytes) -> bytes:
    if any(c in cell for c in (b",", b'"', b"\n", b"\r")):
        return b'"' + cell.replace(b'"', b'""') + b'"'
    return cell


def _predict_csv(
    src: Path, dest: Path, sig: Signature, run: Run, chunk_rows: int, max_line: int
) -> tuple[Path, int]:
    rows = 0
    with open(src, "rb") as f, open(dest, "wb") as out:
        header, columns = read_csv_header(f, sig, max_line)
        added = [c for s in sig.outputs for c in sig.output_columns(s)]
        clash = [c for c in added if c in columns]
        if clash:
            raise InvalidInput(
                f"the CSV already has the output column(s) {clash}; rename them so predictions fit"
            )
        cols = [columns.index(c) for c in sig.columns]
        out.write(header + b"," + b",".join(c.encode() for c in added) + b"\n")
        for lines in _lines(f, chunk_rows, max_line):
            fields = iter(_fields(lines, cols, len(columns), first_line=rows + 2))
            names = iter(sig.columns)
            arrays = {}
            for spec in sig.inputs:
                width = spec.width if spec.rank == 2 else 1
                parts = [
                    _parse(next(fields), spec.dtype, next(names), rows + 2) for _ in range(width)
                ]
                values = np.stack(parts, axis=1)
                arrays[spec.name] = check_values(
                    values, spec.dtype, "CSV row", sig.allow_nan, first_row=rows + 1
                )
            result = run(check_feeds(sig, arrays, NO_LIMIT))
            cells = [c for s in sig.outputs for c in _cells(result[s.name])]
            if len(cells) == 1:
                # The common case of one output column: one formatting step per row.
                out.writelines(
                    ln.rstrip(b"\r\n") + b"," + v + b"\n"
                    for ln, v in zip(lines, cells[0], strict=True)
                )
            else:
                out.writelines(
                    b",".join((ln.rstrip(b"\r\n"), *row)) + b"\n"
                    for ln, row in zip(lines, zip(*cells, strict=True), strict=True)
                )
            rows += len(lines)
    if rows == 0:
        raise InvalidInput("the CSV has a header but no rows")
    return dest, rows
