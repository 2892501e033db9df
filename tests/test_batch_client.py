"""`python -m onnx_serving predict-file`: a big file through a real `bentoml serve`, with the
server restarted in the middle, a refused chunk, a resumed run, and 429/503 retries."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, BentoServer

from onnx_serving.offline import client as batch_client
from onnx_serving.offline.client import BatchError, Client, Retry

ROWS = 1_000_000


def write_csv(path: Path, x: np.ndarray, bad_line: int | None = None) -> None:
    """id,x with x as float32 text that reads back as the same float32."""
    lines = [b"%d,%.9g\n" % (i, v) for i, v in enumerate(x.tolist())]
    if bad_line is not None:
        lines[bad_line - 2] = b"%d,abc\n" % (bad_line - 2)  # line 1 is the header
    path.write_bytes(b"id,x\n" + b"".join(lines))


def read_output(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The id and y columns of an output CSV."""
    assert path.read_bytes().split(b"\n", 1)[0] == b"id,x,y"
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, usecols=(0, 2))
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.float32)


def assert_complete(out: Path, x: np.ndarray) -> None:
    ids, y = read_output(out)
    np.testing.assert_array_equal(ids, np.arange(len(x)))  # every row, in input order
    np.testing.assert_array_equal(y.view(np.uint32), (2 * x).view(np.uint32))  # to the bit
    assert not out.with_name(out.name + ".part").exists()
    assert not out.with_name(out.name + ".part.json").exists()


def client(src: Path, out: Path, url: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "onnx_serving", "predict-file", str(src), str(out)]
    cmd += ["--url", url, "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def chunks_done(out: Path) -> int:
    try:
        return json.loads(out.with_name(out.name + ".part.json").read_text())["chunks_done"]
    except (OSError, ValueError, KeyError):
        return 0


def pause_after(proc: subprocess.Popen[str], out: Path, chunks: int) -> None:
    """SIGSTOP the client once `chunks` chunks are written: what happens next, happens mid-file."""
    deadline = time.monotonic() + 120
    while chunks_done(out) < chunks:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the client made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)


def file_requests(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.findall(r'onnx_predictions_total\{endpoint="/predict_file"[^}]*\} ([0-9.]+)', text)
    return sum(map(float, found))


def test_a_million_rows_survive_a_server_restart(model_home: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(13).uniform(-1e6, 1e6, ROWS).astype(np.float32)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(src, x)
    first = BentoServer(model_home, tmp_path / "a" / "serve.log")
    second = None
    try:
        first.wait_ready(timeout=120)
        proc = client(src, out, first.url, "--chunk-rows", "25000", "--concurrency", "2",
                      "--retries", "100", "--max-backoff", "1")  # fmt: skip
        pause_after(proc, out, 5)
        first.stop()  # a restart: the old server is gone, the client's connections with it
        proc.send_signal(signal.SIGCONT)
        time.sleep(1)  # the client meets a closed port and retries
        assert not out.exists()
        second = BentoServer(model_home, tmp_path / "b" / "serve.log", port=first.port)
        second.wait_ready(timeout=120)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "retrying" in err  # it did meet the restart
        assert 0 < file_requests(second.url) < ROWS / 25000  # the rest, not all, went there
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
    assert_complete(out, x)


def test_npy_in_npy_out(server_url: str, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal(ROWS).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rows = batch_client.predict_file(
        tmp_path / "x.npy", tmp_path / "y.npy", server_url, chunk_rows=300_000, progress=False
    )
    assert rows == ROWS
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y.view(np.uint32), (2 * x).view(np.uint32))


def test_a_refused_chunk_fails_clearly_and_leaves_no_output(
    server_url: str, tmp_path: Path
) -> None:
    x = np.arange(50_000, dtype=np.float32)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(src, x, bad_line=31_234)
    proc = client(src, out, server_url, "--chunk-rows", "10000")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    # A 400 is not retried; the bad value is named by its line in the input, not the chunk.
    assert "HTTP 400: CSV line 31234: x = 'abc' is not a number" in err, err
    assert "retrying" not in err
    assert not out.exists()
    assert chunks_done(out) == 3  # the chunks before it, kept for a resume


def test_an_interrupted_run_resumes_where_it_stopped(server_url: str, tmp_path: Path) -> None:
    x = np.random.default_rng(2).uniform(-100, 100, 200_000).astype(np.float32)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv(src, x)
    proc = client(src, out, server_url, "--chunk-rows", "10000", "--concurrency", "1")
    pause_after(proc, out, 4)
    proc.kill()  # a crash (or Ctrl-C) mid-file
    proc.wait()
    done = chunks_done(out)
    assert 4 <= done < 20
    assert not out.exists()  # never a partial output under the final name

    before = file_requests(server_url)
    proc = client(src, out, server_url, "--chunk-rows", "10000")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"resuming {src}: {done} chunk(s), {done * 10_000} rows already done" in err
    assert file_requests(server_url) - before == 20 - done  # the done chunks were not resent
    assert_complete(out, x)


def test_a_missing_column_is_refused_before_any_upload(server_url: str, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,z\n1,2\n")
    with pytest.raises(BatchError, match=r"the CSV header has no \['x'\] column"):
        batch_client.predict_file(tmp_path / "in.csv", tmp_path / "o.csv", server_url)
    assert not (tmp_path / "o.csv").exists()


def fake(responses: list[httpx.Response | Exception]) -> tuple[Client, list[float]]:
    """A Client whose server answers `responses` in turn; the times of the calls."""
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    c = Client("http://127.0.0.1:9", Retry(attempts=4, base_s=0.01, cap_s=0.05), 5.0, None)
    c.http = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(handler))
    return c, calls


def test_retries_honour_retry_after_and_stop_at_a_client_error() -> None:
    c, calls = fake(
        [
            httpx.Response(503, headers={"Retry-After": "0.3"}),
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.ConnectError("refused"),
            httpx.Response(408, json={"error": "the request body arrived at 0 bytes/s"}),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    c.retry = Retry(attempts=5, base_s=0.01, cap_s=0.05)
    assert c.call("GET", "/metadata", "metadata").json() == {"ok": True}
    assert len(calls) == 5
    assert calls[1] - calls[0] >= 0.3  # as the server asked
    c, calls = fake([httpx.Response(404, json={"error": "model version 'v9' is not served"})])
    with pytest.raises(BatchError, match=r"HTTP 404: model version 'v9' is not served"):
        c.call("POST", "/predict_file", "chunk 0")
    assert len(calls) == 1  # a 4xx other than 408 and 429 is not retried
    c, calls = fake([httpx.Response(503)] * 4)
    with pytest.raises(BatchError, match="gave up after 4 attempts: HTTP 503"):
        c.call("POST", "/predict_file", "chunk 0")
    assert batch_client.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert batch_client.retry_after("soon") is None


def test_cli_help_names_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "onnx_serving", "predict-file", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
    )
    assert out.returncode == 0 and "--chunk-rows" in out.stdout


def test_without_the_client_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    """tqdm is the client extra's, not serving's: `make serve`'s venv lacks it."""
    (tmp_path / "in.csv").write_text("x\n1\n")
    script = (
        "import sys; sys.modules['tqdm'] = None; "  # as if it were not installed
        "from onnx_serving.__main__ import main; "
        f"sys.exit(main(['predict-file', {str(tmp_path / 'in.csv')!r}, "
        f"{str(tmp_path / 'out.csv')!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert "needs tqdm: pip install -e '.[client]' (make venv installs it)" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_url_where_nothing_listens_fails_in_seconds(tmp_path: Path) -> None:
    from harness.local_server import free_port

    (tmp_path / "in.csv").write_text("x\n1\n")
    started = time.monotonic()
    with pytest.raises(BatchError, match=r"nothing answers at .*check --url"):
        batch_client.predict_file(
            tmp_path / "in.csv", tmp_path / "out.csv", f"http://127.0.0.1:{free_port()}"
        )
    assert time.monotonic() - started < 5
