"""The file side of the batch client (client.py): the input read in chunks of rows
(CSV with /predict_file's column rule, or .npy), and the answers written in input order
(CSV, or one memory-mapped .npy per output, several making an .npz). Each writer records in
the run's state how far the output got, so that a run resumes where it stopped."""

from __future__ import annotations

import io
import itertools
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_serving.model.signature import Signature
from onnx_serving.protocols.files import read_csv_header


@dataclass
class Chunk:
    index: int
    rows_before: int  # data rows before this chunk (error messages count from here)
    line: int  # the input line of its first row (CSV; the header is line 1)
    body: bytes
    rows: int
    lines: int = 0  # CSV: input lines it spans, blank ones too
    end_offset: int = 0  # CSV: where the next chunk starts in the input


# --- reading the input in chunks ------------------------------------------------------------


def csv_chunks(src: Path, sig: Signature, chunk_rows: int, state: dict) -> Iterator[Chunk]:
    """Header + up to chunk_rows lines per chunk, from where `state` says the last run got."""
    with open(src, "rb") as f:
        # The column rule, checked before the first upload, in the server's words.
        header, _ = read_csv_header(f, sig)
        f.seek(state.get("input_offset") or f.tell())
        offset, line, rows = f.tell(), state.get("line", 2), state.get("rows_done", 0)
        for index in itertools.count(state.get("chunks_done", 0)):
            lines = list(itertools.islice(f, chunk_rows))
            if not lines:
                return
            offset += sum(map(len, lines))
            n = sum(1 for ln in lines if ln.strip())
            if n:  # blank lines are skipped, as the server does; a chunk of only those too
                body = header + b"\n" + b"".join(lines)
                yield Chunk(index, rows, line, body, n, len(lines), offset)
            line, rows = line + len(lines), rows + n


def npy_chunks(data: np.ndarray, chunk_rows: int, state: dict) -> Iterator[Chunk]:
    for index in itertools.count(state.get("chunks_done", 0)):
        start = index * chunk_rows
        if start >= len(data):
            return
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(data[start : start + chunk_rows]), allow_pickle=False)
        yield Chunk(index, start, 0, buf.getvalue(), min(chunk_rows, len(data) - start))


def count_lines(src: Path) -> int:
    """Data lines in a CSV, for the progress bar's total (a fast pass over the bytes)."""
    with open(src, "rb") as f:
        return max(0, sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 22), b"")) - 1)


# --- writing the answers in order ------------------------------------------------------------


class CsvOut:
    def __init__(self, part: Path, state: dict) -> None:
        self.f = open(part, "r+b" if state.get("output_bytes") else "wb")  # noqa: SIM115
        self.f.truncate(state.get("output_bytes", 0))  # past it: a chunk the state never saw
        self.f.seek(0, os.SEEK_END)

    def write(self, chunk: Chunk, body: bytes, state: dict) -> None:
        head, _, rows = body.partition(b"\n")
        if self.f.tell() == 0:
            self.f.write(head + b"\n")
        self.f.write(rows)
        self.f.flush()
        os.fsync(self.f.fileno())
        state.update(
            input_offset=chunk.end_offset, line=chunk.line + chunk.lines, output_bytes=self.f.tell()
        )

    def close(self) -> None:
        self.f.close()

    def finish(self, part: Path) -> None:
        pass


class NpyOut:
    """One memory-mapped .npy per output, filled at each chunk's rows; several make an .npz."""

    def __init__(self, part: Path, rows: int, state: dict) -> None:
        self.part, self.rows, self.names = part, rows, state.setdefault("outputs", [])
        self.arrays: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self.arrays.clear()  # unmapped: what was written is on disk

    def file(self, name: str) -> Path:
        return self.part.with_name(f"{self.part.name}.{name}.npy")

    def write(self, chunk: Chunk, body: bytes, state: dict) -> None:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
        outputs = dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else {"": loaded}
        for name, y in outputs.items():
            if name not in self.arrays:
                path, fresh = self.file(name), name not in self.names
                self.arrays[name] = np.lib.format.open_memmap(
                    path, "w+" if fresh else "r+", y.dtype, (self.rows, *y.shape[1:])
                )
                if fresh:
                    self.names.append(name)
            out = self.arrays[name]
            out[chunk.rows_before : chunk.rows_before + len(y)] = y
            out.flush()

    def finish(self, part: Path) -> None:
        if self.names == [""]:
            self.file("").replace(part)
            return
        with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name in self.names:
                z.write(self.file(name), f"{name}.npy")
        for name in self.names:
            self.file(name).unlink()
