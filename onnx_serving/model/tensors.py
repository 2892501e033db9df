"""Tensors in and out: the type table, JSON lists <-> arrays, raw little-endian bytes.

Every way a request arrives (JSON, V2 JSON or binary, raw bytes, CSV, .npy, images) ends
in `check_values`, so the rules on values (NaN, infinity, integer ranges) are written once.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import numpy as np

from onnx_serving.errors import ServingError

# ONNX type -> (NumPy dtype, Open Inference Protocol datatype). Strings are NumPy objects.
DTYPES: dict[str, tuple[np.dtype, str]] = {
    "tensor(float)": (np.dtype(np.float32), "FP32"),
    "tensor(float16)": (np.dtype(np.float16), "FP16"),
    "tensor(double)": (np.dtype(np.float64), "FP64"),
    "tensor(int8)": (np.dtype(np.int8), "INT8"),
    "tensor(int16)": (np.dtype(np.int16), "INT16"),
    "tensor(int32)": (np.dtype(np.int32), "INT32"),
    "tensor(int64)": (np.dtype(np.int64), "INT64"),
    "tensor(uint8)": (np.dtype(np.uint8), "UINT8"),
    "tensor(uint16)": (np.dtype(np.uint16), "UINT16"),
    "tensor(uint32)": (np.dtype(np.uint32), "UINT32"),
    "tensor(uint64)": (np.dtype(np.uint64), "UINT64"),
    "tensor(bool)": (np.dtype(np.bool_), "BOOL"),
    "tensor(string)": (np.dtype(object), "BYTES"),
}
DATATYPES = {v2: dtype for dtype, v2 in DTYPES.values()}


class InvalidInput(ServingError):
    """Input that can't be served, with a message that says why; answered with a 400."""


def check_shape(shape: list[int], where: str, max_values: int, max_rank: int) -> int:
    """A shape a client sent, held to the limits before anything is allocated for it: its
    rank at most MAX_RANK, every dimension and their product at most MAX_VALUES. The count."""
    if len(shape) > max_rank:
        raise InvalidInput(
            f"{where} has {len(shape)} dimensions; at most MAX_RANK={max_rank} are taken",
            reason="shape",
        )
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidInput(f"{where}: shape {shape} has a negative dimension", reason="shape")
        if d > max_values:
            raise InvalidInput(
                f"too many values: {where} has a dimension of {d} > MAX_VALUES={max_values}",
                reason="size",
            )
        count *= d
    if count > max_values:
        raise InvalidInput(
            f"too many values: {where} has shape {shape}, {count} values > MAX_VALUES={max_values}",
            reason="size",
        )
    return count


def type_name(dtype: np.dtype) -> str:
    return "string" if dtype.kind == "O" else str(dtype)


def position(where: str, index: tuple[int, ...], first_row: int = 0) -> str:
    """`x[3]`, `x[2][1]`: where a value sits, rows numbered from `first_row`."""
    if not index:
        return where
    return where + "".join(f"[{i}]" for i in (index[0] + first_row, *index[1:]))


def _first(bad: np.ndarray, values: np.ndarray) -> tuple[tuple[int, ...], Any]:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    # A column of one value per row ([rows, 1]) is numbered by row alone.
    shown = index[:-1] if values.ndim == 2 and values.shape[1] == 1 else index
    return shown, values[index]


def check_values(
    values: np.ndarray, dtype: np.dtype, where: str, allow_nan: bool = False, first_row: int = 0
) -> np.ndarray:
    """`values` as `dtype`, or InvalidInput naming the first value that doesn't fit.

    Floats must be finite and within the type's range (NaN too, if `allow_nan`); integers
    within the type's range. `values` may be wider than `dtype` (float64 parsed from text).
    """
    if dtype.kind == "f":
        if values.dtype.kind not in "fiu":
            raise InvalidInput(f"{where} must hold numbers, not {type_name(values.dtype)}")
        limit = float(np.finfo(dtype).max)
        ok = np.abs(values) <= limit
        if allow_nan:
            ok |= np.isnan(values)
        if not ok.all():
            index, value = _first(~ok, values)
            refused = "infinity" if allow_nan else "NaN, infinity"
            raise InvalidInput(
                f"{position(where, index, first_row)} = {float(value)} is not a finite "
                f"{type_name(dtype)} ({refused} and |v| > {limit:.4g} are refused)"
            )
    elif dtype.kind in "iu":
        if values.dtype.kind not in "iu":
            raise InvalidInput(f"{where} must hold integers, not {type_name(values.dtype)}")
        info = np.iinfo(dtype)
        ok = (values >= info.min) & (values <= info.max)
        if not ok.all():
            index, value = _first(~ok, values)
            raise InvalidInput(
                f"{position(where, index, first_row)} = {int(value)} is out of range for "
                f"{type_name(dtype)} ({info.min}..{info.max})"
            )
    return values if values.dtype == dtype else values.astype(dtype)


# --- JSON ---------------------------------------------------------------------------------------


def _ragged(value: list, where: str) -> InvalidInput:
    """Find the first row whose length differs from the one before it: the slow path."""

    def walk(v: list, at: str) -> InvalidInput | None:
        lengths = [len(r) if isinstance(r, list) else None for r in v]
        for i, n in enumerate(lengths):
            if n != lengths[0]:
                got = "a single value" if n is None else f"{n} value(s)"
                want = "a single value" if lengths[0] is None else f"{lengths[0]} value(s)"
                return InvalidInput(f"ragged rows: {at}[0] has {want} but {at}[{i}] has {got}")
        return next((e for i, r in enumerate(v) if (e := walk(r, f"{at}[{i}]"))), None)

    return walk(value, where) or InvalidInput(f"{where}: rows of different lengths")


def _out_of_range(value: list, dtype: np.dtype, where: str) -> InvalidInput:
    flat = np.asarray(value, dtype=object)
    info = np.iinfo(dtype)
    for index, v in np.ndenumerate(flat):
        if not info.min <= v <= info.max:
            return InvalidInput(
                f"{position(where, index)} = {v} is out of range for {dtype} "
                f"({info.min}..{info.max})"
            )
    return InvalidInput(f"{where}: a value is out of range for {dtype}")


def _rows(value: list, dtype: type) -> np.ndarray | None:
    """Rows of numbers ([[1.0, 2.0], [3.0, 4.0]]) as a [rows, n] array, if that is what
    `value` is: NumPy's nested-list conversion takes 3x as long as this flat pass over them."""
    if not value or not isinstance(value[0], list) or not value[0] or isinstance(value[0][0], list):
        return None
    width = len(value[0])
    if len(set(map(len, value))) != 1:
        return None  # ragged: the slow path says where
    flat = np.fromiter(itertools.chain.from_iterable(value), dtype, count=len(value) * width)
    return flat.reshape(len(value), width)


def from_json(value: list, dtype: np.dtype, where: str, allow_nan: bool = False) -> np.ndarray:
    """Nested JSON lists (already type-checked by pydantic) as an array of `dtype`."""
    try:
        if dtype.kind == "f":
            # float64 first: the range is checked before narrowing.
            arr = _rows(value, np.float64)
            if arr is None:
                arr = np.asarray(value, dtype=np.float64)
        elif dtype.kind == "O":
            arr = np.asarray(value, dtype=np.str_).astype(object)
        else:
            arr = np.asarray(value, dtype=dtype)
    except OverflowError:
        raise _out_of_range(value, dtype, where) from None
    except ValueError:
        raise _ragged(value, where) from None
    if arr.size == 0:
        if arr.ndim > 1 and len(arr):
            raise InvalidInput(f"{where}[0] is an empty row")
        raise InvalidInput(f"{where} is empty: send at least one value")
    return check_values(arr, dtype, where, allow_nan)


def to_json(values: np.ndarray, flatten: bool = False) -> Any:
    """An output array as JSON lists; with `flatten`, a [rows, 1] column as a flat list."""
    if flatten and values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    out = values.tolist()
    if values.dtype.kind == "O":
        return _decode_bytes(out)
    return out


def _decode_bytes(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode_bytes(x) for x in v]
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


# --- raw bytes ----------------------------------------------------------------------------------


def from_bytes(body: bytes | memoryview, dtype: np.dtype, count: int, where: str) -> np.ndarray:
    """`count` little-endian values of `dtype` (BYTES: each a 4-byte length, then the bytes)."""
    if dtype.kind == "O":
        return np.array(_unpack_strings(body, count, where), dtype=object)
    need = count * dtype.itemsize
    if len(body) != need:
        raise InvalidInput(
            f"{where}: {len(body)} bytes of data, but {count} {type_name(dtype)} value(s) "
            f"take {need}"
        )
    return np.frombuffer(body, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _unpack_strings(body: bytes | memoryview, count: int, where: str) -> list[str]:
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise InvalidInput(f"{where}: BYTES data ends after {len(out)} of {count} elements")
        (n,) = struct.unpack_from("<I", body, offset)
        offset += 4
        if offset + n > len(body):
            raise InvalidInput(f"{where}: BYTES element {len(out)} runs past the end of the data")
        out.append(bytes(body[offset : offset + n]).decode("utf-8", "replace"))
        offset += n
    if offset != len(body):
        raise InvalidInput(f"{where}: {len(body) - offset} byte(s) left after {count} elements")
    return out


def to_bytes(values: np.ndarray) -> bytes:
    """Little-endian bytes of an array; strings as 4-byte lengths plus UTF-8."""
    if values.dtype.kind == "O":
        parts = []
        for v in values.reshape(-1).tolist():
            raw = v if isinstance(v, bytes) else str(v).encode()
            parts += [struct.pack("<I", len(raw)), raw]
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
