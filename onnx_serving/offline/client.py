"""`python -m onnx_serving predict-file IN OUT --url URL`: a big file through /predict_file.

The input (CSV or .npy, the column rule of /predict_file, protocols/files.py) goes to the
service in chunks of rows, a few in flight; the answers are written in input order to
OUT.part, and OUT.part.json records how far that got, so a run that stops (a server
restart past the retries, Ctrl-C) resumes where it was. OUT appears only when every chunk
succeeded. Every chunk is pinned to the version /metadata named at the start
(`X-Model-Version`), so one file is never answered by two models.
"""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import json
import logging
import random
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from onnx_serving.model.signature import Signature
from onnx_serving.model.tensors import InvalidInput
from onnx_serving.offline.chunks import Chunk, CsvOut, NpyOut, count_lines, csv_chunks, npy_chunks
from onnx_serving.protocols.files import NPY_MAGIC

logger = logging.getLogger("onnx_serving.offline.client")
STATE_VERSION = 1
# Overload, a restart, a proxy between restarts; and 408: the server gave up on a body that
# stalled (the client paused, or the network did), which a chunk's retry sends again whole.
RETRY_STATUS = {408, 429, 502, 503, 504}


class BatchError(RuntimeError):
    """The file can't be done (a refused chunk, a server gone for good); the message says why."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 10  # per chunk; with the cap, about 2.5 minutes of a server being away
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server knows best when to come back
            return min(retry_after, 10 * self.cap_s)
        # Full jitter: clients that failed together don't all come back together.
        return random.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2**attempt)


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def in_input_terms(message: str, chunk: Chunk) -> str:
    """The server counts lines and rows within the chunk it got: count them in the input."""
    message = re.sub(r"CSV line (\d+)", lambda m: f"CSV line {int(m[1]) - 2 + chunk.line}", message)
    return re.sub(r"row\[(\d+)\]", lambda m: f"row[{int(m[1]) + chunk.rows_before}]", message)


class Client:
    def __init__(self, url: str, retry: Retry, timeout_s: float, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=16),
        )
        self.retry = retry
        self.stopped = threading.Event()  # the run is over: chunks in flight give up

    def call(
        self, method: str, path: str, what: str, first: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried on connection errors and 408/429/502/503/504 with backoff. The
        `first` request of a run fails at once when nothing listens at the URL: a wrong
        --url is said in seconds, not after minutes of retries."""
        for attempt in itertools.count():
            hint = None
            try:
                r = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
                if first:
                    raise BatchError(
                        f"nothing answers at {self.http.base_url} ({exc}): start the server "
                        "(make serve) or check --url"
                    ) from None
                reason = f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:  # refused, reset, timed out: the server is away
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    return r
                if r.status_code not in RETRY_STATUS:
                    raise BatchError(f"{what}: HTTP {r.status_code}: {error_text(r)}")
                reason, hint = f"HTTP {r.status_code}", retry_after(r.headers.get("Retry-After"))
            if self.stopped.is_set():  # the run is over (its connections closed under us)
                raise BatchError(f"{what}: abandoned, another chunk failed")
            if attempt + 1 >= self.retry.attempts:
                raise BatchError(f"{what}: gave up after {attempt + 1} attempts: {reason}")
            wait = self.retry.delay(attempt, hint)
            logger.warning("%s: %s; retrying in %.1f s", what, reason, wait)
            if self.stopped.wait(wait):
                raise BatchError(f"{what}: abandoned, another chunk failed")
        raise AssertionError("unreachable")


def error_text(r: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(r.json().get("error") or r.json())
    return r.text[:500]


# --- the run -------------------------------------------------------------------------------


def identity(src: Path, chunk_rows: int, tag: str) -> dict[str, Any]:
    st = src.stat()
    return {"version": STATE_VERSION, "input": str(src.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "chunk_rows": chunk_rows, "model": tag}  # fmt: skip


def load_state(path: Path, ident: dict[str, Any], restart: bool) -> dict[str, Any]:
    """What an earlier run of the same file, chunking and model got done; {} for none."""
    if restart or not path.exists():
        return {}
    with contextlib.suppress(ValueError, OSError):
        state = json.loads(path.read_text())
        if state.get("model") != ident["model"] and state.get("input") == ident["input"]:
            raise BatchError(
                f"{path}: the partial output was made by {state.get('model')}, the service now "
                f"serves {ident['model']}; pass --restart to start over"
            )
        if all(state.get(k) == v for k, v in ident.items()):
            return state
    logger.warning("%s is from another input or chunk size: starting over", path)
    return {}


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)  # atomic: a crash leaves the old state or the new, never half


def predict_file(
    src: Path,
    dest: Path,
    url: str,
    *,
    chunk_rows: int = 100_000,
    concurrency: int = 2,
    retry: Retry | None = None,
    timeout_s: float = 300.0,
    api_key: str | None = None,
    restart: bool = False,
    progress: bool = True,
) -> int:
    """Send every row of `src` through the service at `url`; write `dest`; return the rows."""
    client = Client(url, retry or Retry(), timeout_s, api_key)
    meta = client.call("GET", "/metadata", "GET /metadata", first=True).json()
    tag, sig = meta["tag"], Signature.from_metadata(meta["signature"])
    part, state_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    ident = identity(src, chunk_rows, tag)
    state = {**ident, **load_state(state_path, ident, restart)}
    if state.get("chunks_done"):
        logger.warning(
            "resuming %s: %d chunk(s), %d rows already done", src, state["chunks_done"],
            state["rows_done"],
        )  # fmt: skip
    with open(src, "rb") as f:
        is_npy = f.read(len(NPY_MAGIC)) == NPY_MAGIC
    if is_npy:
        data = np.load(src, mmap_mode="r", allow_pickle=False)
        total, chunks = len(data), npy_chunks(data, chunk_rows, state)
        out: CsvOut | NpyOut = NpyOut(part, total, state)
        name, ctype = "chunk.npy", "application/x-npy"
    else:
        total, chunks = count_lines(src), csv_chunks(src, sig, chunk_rows, state)
        out, name, ctype = CsvOut(part, state), "chunk.csv", "text/csv"
    pin = {"X-Model-Version": tag}

    def send(chunk: Chunk) -> bytes:
        what = (
            f"chunk {chunk.index} (rows {chunk.rows_before + 1}-{chunk.rows_before + chunk.rows})"
        )
        try:
            r = client.call("POST", "/predict_file", what, headers=pin,
                            files={"file": (name, chunk.body, ctype)})  # fmt: skip
        except BatchError as exc:
            raise BatchError(in_input_terms(str(exc), chunk)) from None
        if r.headers.get("X-Model") != tag:
            raise BatchError(f"{what} was answered by {r.headers.get('X-Model')}, not {tag}")
        return r.content

    done = state.get("rows_done", 0)
    bar = tqdm(total=total, initial=done, unit="rows", unit_scale=True, disable=not progress)
    pending: deque[tuple[Chunk, Future[bytes]]] = deque()
    pool = ThreadPoolExecutor(concurrency)
    with bar:
        try:
            for chunk in itertools.chain(chunks, [None]):
                if chunk is not None:
                    pending.append((chunk, pool.submit(send, chunk)))
                # Answers are written in input order; `concurrency` chunks are in flight.
                while pending and (chunk is None or len(pending) >= concurrency):
                    done_chunk, future = pending.popleft()
                    out.write(done_chunk, future.result(), state)
                    done += done_chunk.rows
                    state.update(chunks_done=done_chunk.index + 1, rows_done=done)
                    save_state(state_path, state)
                    bar.update(done_chunk.rows)
        except InvalidInput as exc:  # the input breaks the column rule: no upload was made
            raise BatchError(str(exc)) from None
        finally:
            # After a failure (or Ctrl-C): in-flight chunks stop, retries stop waiting.
            client.stopped.set()
            client.http.close()
            pool.shutdown(wait=True, cancel_futures=True)
            out.close()
    if done == 0:
        part.unlink(missing_ok=True)
        raise BatchError(f"{src} has no rows")
    out.finish(part)
    part.replace(dest)  # only now, complete, under its own name
    state_path.unlink()
    return done
