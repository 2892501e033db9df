"""Hostile input, against real servers with the default settings: what an attacker or an
unlucky user sends, and its neighbours. Each case is bounded in time and bytes; where memory
is the risk, the workers' resident memory is measured while it runs (PeakRss) and printed.

Every answer is a 4xx with a reason (or a normal answer), never a 5xx; a 4xx is one WARNING
line in the server's log and never the values sent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import MIB, ROOT, BentoServer, PeakRss, running

JSON = {"Content-Type": "application/json"}
# The memory bounds the issue sets per case, in MB of the workers' RSS growth.
HEADER_JSON_V2_BOUND_MB = 200
CSV_BOUND_MB = 300


@pytest.fixture(scope="module")
def default(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    """The demo model as `make serve` serves it: every setting at its default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 1,000 slow clients and the server's 1,000 ends: more descriptors than the usual 1,024.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    try:
        with running(model_home, log) as server:
            yield server
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def tokens(token_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One server per token model (and the sizer), started together; the first with the
    access log on."""
    logs = tmp_path_factory.mktemp("token_logs")
    servers = {}
    try:
        for name, env in (
            ("token-embedding", {"ACCESS_LOG": "1"}),
            ("token-pair", {}),
            ("sizer", {}),
        ):
            servers[name] = BentoServer(
                token_home, logs / f"{name}.log", MODEL_NAME=name, WORKERS="1", **env
            )
        for server in servers.values():
            server.wait_ready(timeout=120)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def raw_request(
    port: int, head: bytes, parts: Iterator[bytes] | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    """Send `head` and `parts` from a thread while reading the answer here: a server that
    answers early and closes is read before its reset can drop the answer. (status, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def writer() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(head)
            for part in parts or ():
                sock.sendall(part)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    thread.join(timeout)
    head_part, _, body = data.partition(b"\r\n\r\n")
    status = int(head_part.split()[1]) if head_part else 0
    return status, body


def _length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return len(head) + 4 + int(match.group(1)) if match else 1 << 62


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def still_serves(server: BentoServer) -> None:
    r = httpx.post(f"{server.url}/predict", json={"x": [1.5]}, timeout=30)
    assert r.status_code == 200 and r.json()["y"] == [3.0], r.text


# --- headers ----------------------------------------------------------------------------------


def test_8_million_headers_are_refused_at_the_limit_in_bounded_memory(default: BentoServer) -> None:
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\n"
    parts = (b"".join(b"h%d: v\r\n" % (i + j) for j in range(100_000)) for i in range(80))
    with PeakRss(default) as rss:
        started = time.monotonic()
        status, body = raw_request(default.port, head, parts)
        seconds = time.monotonic() - started
    print(f"\n8 M headers: {status} in {seconds:.2f} s, RSS +{rss.growth_mb:.0f} MB")
    assert status == 431 and "HTTP_MAX_HEADERS" in error_of(body)
    assert seconds < 5 and rss.growth_mb < HEADER_JSON_V2_BOUND_MB
    assert httpx.get(f"{default.url}/livez").status_code == 200


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /livez HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(99)), 200),
        (b"GET /livez HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)), 431),
        (b"GET /livez HTTP/1.1\r\nbig: " + b"v" * 60_000 + b"\r\n", 200),
        (b"GET /livez HTTP/1.1\r\nbig: " + b"v" * 70_000 + b"\r\n", 431),
        (b"GET /livez?" + b"q" * 10_000_000 + b" HTTP/1.1\r\n", 431),
        (b"GET /livez HTTP/1.1\r\nbig: " + b"v" * 20_000_000 + b"\r\n", 431),
    ],
    ids=["99-headers", "101-headers", "60-KB-header", "70-KB-header", "10-MB-url", "20-MB-value"],
)
def test_header_limits_and_their_neighbours(default: BentoServer, head: bytes, status: int) -> None:
    got, body = raw_request(default.port, head + b"Host: x\r\n\r\n")
    assert got == status, body[:200]
    if status == 431:
        assert "at most 100 headers and 65,536 bytes" in error_of(body)


# --- JSON values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/predict", b'{"x": [' + b"0," * 13_000_000 + b"0]}", JSON),
        ("/predict_batched", b'{"x": [' + b"0," * 13_000_000 + b"0]}", JSON),
        (
            "/v2/models/linear-2x/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ['
            + b"[]," * 8_000_000
            + b"[]]}]}",
            JSON,
        ),
        (
            "/v2/models/linear-2x/infer",
            b'{"parameters": {"p": [' + b"{}," * 8_000_000 + b'{}]}, "inputs": []}',
            JSON,
        ),
        (
            "/v2/models/linear-2x/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
            b'"parameters": {"p": [' + b"{}," * 4_000_000 + b'{}]}, "data": [1]}]}',
            JSON,
        ),
    ],
    ids=["13M-values", "13M-values-batched", "8M-empty-lists", "8M-objects", "v2-tensor-params"],
)
def test_json_with_millions_of_values_is_refused_before_it_is_parsed(
    default: BentoServer, path: str, body: bytes, headers: dict
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with PeakRss(default) as rss:
        started = time.monotonic()
        status, answer = raw_request(default.port, head, iter([body]))
        seconds = time.monotonic() - started
    per_byte = rss.growth_mb * MIB / len(body)
    print(f"\n{len(body) / MIB:.0f} MB to {path}: {status} in {seconds:.2f} s, "
          f"RSS +{rss.growth_mb:.0f} MB ({per_byte:.1f} bytes per body byte)")  # fmt: skip
    assert status == 413 and "MAX_VALUES=1,000,000" in error_of(answer)
    assert seconds < 10 and rss.growth_mb < HEADER_JSON_V2_BOUND_MB
    still_serves(default)


def measured_post(
    server: BentoServer, path: str, body: bytes, what: str
) -> tuple[httpx.Response, float]:
    """POST a JSON body; the answer and the workers' peak RSS growth meanwhile (printed)."""
    with PeakRss(server) as rss:
        r = httpx.post(f"{server.url}{path}", content=body, headers=JSON, timeout=60)
    print(f"\n{what} to {path}: {r.status_code}, RSS +{rss.growth_mb:.0f} MB")
    return r, rss.growth_mb


KEYS = b",".join(b'"k%d":0' % i for i in range(1_000_000))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", b'{"x": [1.5], ' + KEYS + b"}"),
        ("/predict", b'{"inputs": {' + KEYS + b"}}"),
        (
            "/v2/models/linear-2x/infer",
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], '
            + KEYS
            + b"}",
        ),
        ("/predict", b'{"x": [1.5], ' + KEYS.replace(b'":', b'" \n\t :') + b"}"),
    ],
    ids=["1M-unknown-fields", "1M-unknown-inputs", "v2-1M-unknown-fields", "spaced-names"],
)
def test_a_million_names_are_refused_before_they_are_parsed(
    default: BentoServer, path: str, body: bytes
) -> None:
    """Inside the value budget, each name the model doesn't take cost pydantic an error of
    some 270 bytes, and BentoML an answer listing them all (1.4 GB, a 143 MB answer)."""
    r, growth_mb = measured_post(default, path, body, "1 M names")
    assert r.status_code == 413 and "names more than 65,536 fields" in r.json()["error"]
    assert len(r.content) < 1000 and growth_mb < HEADER_JSON_V2_BOUND_MB


def test_colons_inside_strings_are_not_names(default: BentoServer) -> None:
    """The neighbour: 100,000 colons inside a string (V2's request id) are no names."""
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}
    body = {"id": ":" * 100_000, "inputs": [tensor]}
    r = httpx.post(f"{default.url}/v2/models/linear-2x/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [4.0]


def test_a_million_wrong_values_are_a_400_in_bounded_memory(default: BentoServer) -> None:
    """Inside the budget, but every value wrong: pydantic's errors must not cost more than
    the values."""
    body = b'{"x": [' + b'"a",' * 999_999 + b'"a"]}'
    r, growth_mb = measured_post(default, "/predict", body, "1 M strings")
    assert r.status_code == 400 and "valid number" in r.json()["error"]
    assert len(r.content) < 10_000 and growth_mb < HEADER_JSON_V2_BOUND_MB


# --- V2 and binary shapes ---------------------------------------------------------------------


def test_v2_tensors_of_every_rank_are_4xx_and_leak_nothing(default: BentoServer) -> None:
    url = f"{default.url}/v2/models/linear-2x/infer"
    with httpx.Client(timeout=30) as http:
        for rank in range(2, 20):  # warm-up: whatever is cached per rank is made here
            tensor = {"name": "x", "shape": [1] * rank, "datatype": "FP32", "data": [1.0]}
            http.post(url, json={"inputs": [tensor]})
        with PeakRss(default) as rss:
            statuses = set()
            for rank in range(2, 545):
                nested: object = [1.0]
                for _ in range(rank - 1):
                    nested = [nested]
                tensor = {"name": "x", "shape": [1] * rank, "datatype": "FP32", "data": nested}
                statuses.add(http.post(url, json={"inputs": [tensor]}).status_code)
    print(f"\nranks 2..544: statuses {sorted(statuses)}, RSS +{rss.growth_mb:.0f} MB")
    # Rank 2 is the model's own ([rows, 1]); deeper ones are 400, none a 500.
    assert statuses <= {200, 400} and 400 in statuses
    assert rss.growth_mb < 50


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 2**63], "MAX_VALUES"),
        ([2**40, 2**40], "MAX_VALUES"),
        ([1] * 65, "MAX_RANK=16"),
        ([-1, 1], "negative"),
    ],
)
def test_v2_binary_shapes_are_checked_before_allocation(
    default: BentoServer, shape: list, message: str
) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    r = httpx.post(
        f"{default.url}/v2/models/linear-2x/infer",
        content=head,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (",".join(["1"] * 65), "MAX_RANK=16"),
        ("0,9223372036854775808", "MAX_VALUES"),
        ("1,-1", "negative"),
    ],
)
def test_x_shape_is_checked_before_allocation(
    default: BentoServer, shape: str, message: str
) -> None:
    r = httpx.post(
        f"{default.url}/predict_binary",
        content=b"\0\0\0\0",
        headers={"Content-Type": "application/octet-stream", "X-Shape": shape},
    )
    assert r.status_code == 400 and message in r.json()["error"], r.text


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"x\n" + b"1," * 50_000_000 + b"1\n", "a CSV line is longer than MAX_CSV_LINE_BYTES"),
        (b"x," * 50_000_000 + b"x\n1\n", "the CSV header line is longer than MAX_CSV_LINE_BYTES"),
    ],
    ids=["100MB-row", "100MB-header"],
)
def test_a_csv_line_of_millions_of_cells_is_refused_in_bounded_memory(
    default: BentoServer, content: bytes, message: str
) -> None:
    with PeakRss(default) as rss:
        started = time.monotonic()
        r = httpx.post(
            f"{default.url}/predict_file", files={"file": ("big.csv", content)}, timeout=60
        )
        seconds = time.monotonic() - started
    print(f"\n{len(content) / MIB:.0f} MB CSV line: {r.status_code} in {seconds:.1f} s, "
          f"RSS +{rss.growth_mb:.0f} MB")  # fmt: skip
    assert r.status_code == 413 and message in r.json()["error"], r.text[:300]
    assert len(r.content) < 1000 and seconds < 30 and rss.growth_mb < CSV_BOUND_MB


@pytest.mark.parametrize(
    ("name", "content", "status", "message"),
    [
        ("q.csv", b'x,note\n1,"two\nlines"\n2,b\n', 400, "a quoted field holds a line break"),
        ("r.csv", b"x\n1\n2,3,4\n", 400, "has 3 fields, the header has 1"),
        ("h.csv", b",".join(b"c%d" % i for i in range(1000)) + b"\n1\n", 400, "and 980 more"),
        ("", b"http://127.0.0.1:9/never-fetched", 400, "URLs and plain fields are not taken"),
        ("n" * 300 + ".npy", None, 200, ""),
        ("n" * 300 + ".csv", b"x\n1\n", 200, ""),
    ],
    ids=[
        "quoted-newline",
        "ragged",
        "1000-columns",
        "a-url-not-a-file",
        "300-char-npy-name",
        "300-char-csv-name",
    ],
)
def test_file_neighbours(
    default: BentoServer, name: str, content: bytes | None, status: int, message: str
) -> None:
    if content is None:
        buf = io.BytesIO()
        np.save(buf, np.array([1.0, 2.0], dtype=np.float32))
        content = buf.getvalue()
    r = httpx.post(f"{default.url}/predict_file", files={"file": (name, content)}, timeout=30)
    assert r.status_code == status, r.text[:300]
    if message:
        assert message in r.json()["error"] and len(r.content) < 2000


def test_predict_file_counts_its_rows(default: BentoServer) -> None:
    def rows() -> float:
        text = httpx.get(f"{default.url}/metrics").text
        pattern = r'onnx_prediction_rows_total\{[^}]*endpoint="/predict_file"[^}]*\} (\S+)'
        found = re.findall(pattern, text)
        return sum(map(float, found))

    before = rows()
    content = b"x\n" + b"1.5\n" * 1000
    r = httpx.post(f"{default.url}/predict_file", files={"file": ("a.csv", content)})
    assert r.status_code == 200
    assert rows() - before == 1000


# --- slow clients -----------------------------------------------------------------------------


class SlowClients:
    """`n` connections that send a POST's headers, then one body byte every `gap_s`, and open
    again whenever the server closes them (as an attacker would), until stopped."""

    def __init__(self, port: int, n: int, gap_s: float = 2.0) -> None:
        self.port, self.n, self.gap_s = port, n, gap_s
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _head(self, i: int) -> bytes:
        length = 20 if i % 2 else 1_000_000  # half small bodies, half large ones
        return (
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    def _open(self, i: int) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.setblocking(False)
            s.send(self._head(i))
            return s
        except OSError:
            return None

    def _run(self) -> None:
        socks = [self._open(i) for i in range(self.n)]
        while not self._stop.wait(self.gap_s):
            for i, s in enumerate(socks):
                try:
                    if s is None:
                        raise OSError
                    s.send(b" ")
                    with contextlib.suppress(BlockingIOError):
                        if s.recv(4096) == b"":  # answered (408) and closed
                            raise OSError
                except OSError:
                    if s is not None:
                        s.close()
                    socks[i] = self._open(i)
                    self.reconnects += 1
        for s in socks:
            if s is not None:
                s.close()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_thousand_slow_bodies_hold_no_slot(default: BentoServer) -> None:
    answered, seen_receiving = [], 0
    with SlowClients(default.port, 1000) as slow, httpx.Client(timeout=10) as http:
        time.sleep(3)  # all connected and trickling
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            try:
                r = http.post(f"{default.url}/predict", json={"x": [1.0]})
                answered.append(r.status_code)
            except httpx.HTTPError as exc:
                answered.append(type(exc).__name__)
            if len(answered) % 50 == 0:
                metrics = http.get(f"{default.url}/metrics").text
                found = re.findall(r"^onnx_bodies_receiving (\S+)", metrics, re.MULTILINE)
                seen_receiving = max([seen_receiving, *map(float, found)])
            time.sleep(0.02)
        metrics = http.get(f"{default.url}/metrics").text
    ok = answered.count(200) / len(answered)
    cut = sum(map(float, re.findall(r"^onnx_slow_bodies_total (\S+)", metrics, re.MULTILINE)))
    print(f"\n1,000 slow bodies: {len(answered)} requests of a normal client, {ok:.1%} 200; "
          f"{cut:.0f} slow bodies cut (408), {slow.reconnects} reconnects; "
          f"up to {seen_receiving:.0f} bodies receiving at once")  # fmt: skip
    assert ok >= 0.9, sorted(set(map(str, answered)))
    assert cut > 0 and seen_receiving > 0
    still_serves(default)


# --- the model's own errors -------------------------------------------------------------------


def test_out_of_vocabulary_ids_are_a_400_with_the_runtime_s_reason(tokens: dict) -> None:
    url = tokens["token-embedding"].url
    ok = httpx.post(f"{url}/predict", json={"x": [[1, 2, 999]]})
    assert ok.status_code == 200 and len(ok.json()["y"][0]) == 8
    for route in ("/predict", "/predict_batched"):
        r = httpx.post(f"{url}{route}", json={"x": [[1, 2, 5000]]})
        assert r.status_code == 400 and "the model could not run on this input" in r.text
        assert "5000" in r.json()["error"]  # the runtime's own words: which index, which range
    ids = {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 5000]}
    v2 = {"inputs": [ids]}
    r = httpx.post(f"{url}/v2/models/token-embedding/infer", json=v2)
    assert r.status_code == 400 and "could not run" in r.json()["error"]


def test_tritonclient_reads_the_runtime_s_error(tokens: dict) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(tokens["token-embedding"].url.removeprefix("http://"))
    ids = triton.InferInput("input_ids", [1, 2], "INT64")
    ids.set_data_from_numpy(np.array([[3, 7000]], dtype=np.int64), binary_data=True)
    with pytest.raises(InferenceServerException, match="could not run on this input"):
        client.infer("token-embedding", [ids])


def test_inputs_that_share_seq_must_agree(tokens: dict) -> None:
    url = tokens["token-pair"].url
    good = {"inputs": {"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 0]]}}
    assert httpx.post(f"{url}/predict", json=good).status_code == 200
    bad = {"inputs": {"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]}}
    r = httpx.post(f"{url}/predict", json=bad)
    assert r.status_code == 400
    assert "share the dimension 'seq', but it is 3 in one and 2 in the other" in r.json()["error"]
    v2 = {"inputs": [
        {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
    ]}  # fmt: skip
    r = httpx.post(f"{url}/v2/models/token-pair/infer", json=v2)
    assert r.status_code == 400 and "'seq'" in r.json()["error"]


@pytest.mark.parametrize(
    ("dims", "status"),
    [([1000, 1000], 200), ([5000, 5000], 413), ([100_000, 100_000], 413), ([2**31, 2**31], 413)],
)
def test_an_output_sized_by_the_input_s_values_is_bounded(
    tokens: dict, dims: list, status: int
) -> None:
    server = tokens["sizer"]
    with PeakRss(server) as rss:
        r = httpx.post(f"{server.url}/predict", json={"x": dims}, timeout=60)
    print(f"\nsizer {dims}: {r.status_code}, RSS +{rss.growth_mb:.0f} MB")
    assert r.status_code == status, r.text[:300]
    if status == 413:
        assert "MAX_OUTPUT_BYTES" in r.json()["error"]
        assert rss.growth_mb < 200


# --- logs -------------------------------------------------------------------------------------


def test_a_4xx_is_one_warning_line_without_the_values_sent(tokens: dict) -> None:
    server = tokens["token-pair"]
    secret = 4_242_424_242_424
    r = httpx.post(
        f"{server.url}/predict",
        json={"inputs": {"input_ids": [[secret, "s3cr3t-value"]], "attention_mask": [[1, 1]]}},
        headers={"X-Request-ID": "hostile-test-1"},
    )
    assert r.status_code == 400
    time.sleep(0.5)
    log = server.log_path.read_text(errors="replace")
    assert str(secret) not in log and "s3cr3t-value" not in log
    lines = [ln for ln in log.splitlines() if "hostile-test-1" in ln]
    assert len(lines) == 1 and "[WARNING]" in lines[0] and "POST /predict -> 400" in lines[0]
    assert "Traceback" not in log and "[ERROR]" not in log


def test_the_access_log_can_t_be_forged(tokens: dict) -> None:
    server = tokens["token-embedding"]  # ACCESS_LOG=1
    status, _ = raw_request(
        server.port, b"GET /livez%0d%0aFORGED%20LINE HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 404
    time.sleep(0.5)
    log = server.log_path.read_text(errors="replace")
    assert "FORGED LINE" in log  # it was logged...
    assert not any(ln.startswith("FORGED") for ln in log.splitlines())  # ...on its own line


# --- drain ------------------------------------------------------------------------------------


def test_every_readiness_answer_follows_the_drain(model_home: Path, tmp_path: Path) -> None:
    with running(model_home, tmp_path / "serve.log", WORKERS="1", DRAIN_SECONDS="4") as server:
        (worker,) = server.workers()
        worker.terminate()  # SIGTERM: the drain starts
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        v2 = httpx.get(f"{server.url}/v2/health/ready")
        assert v2.status_code == 503 and v2.json() == {"ready": False}
        model = httpx.get(f"{server.url}/v2/models/linear-2x/ready")
        assert model.status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


# --- images -----------------------------------------------------------------------------------


def huge_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def huge_jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose header says `width` x `height` (what a decoder would allocate)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 128, 0)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("make", "size"),
    [(huge_png, (7746, 7746)), (huge_jpeg, (9950, 9950)), (huge_jpeg, (7072, 7071))],
    ids=["60MP-png", "99MP-jpeg", "50.01MP-jpeg"],
)
def test_images_past_the_pixel_limit_are_refused_before_decoding(
    fixture_servers: dict[str, str], make: Any, size: tuple[int, int]
) -> None:
    url = fixture_servers["torch_cnn"]  # an image model, default settings
    content = make(*size)
    r = httpx.post(f"{url}/predict_image", files={"file": ("a.img", content)}, timeout=30)
    assert r.status_code == 413, r.text[:300]
    assert (
        f"{size[0]}x{size[1]}" in r.json()["error"]
        and "MAX_IMAGE_PIXELS=50,000,000" in r.json()["error"]
    )


# --- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_NAME": "nope"}, "nope:latest is not in the model store"),
        ({"ROUTING_FILE": "routing.yaml"}, "default 'v9' is not served"),
        ({"MAX_RANK": "99"}, "MAX_RANK: Input should be less than or equal to 32"),
    ],
    ids=["no-such-model", "routing-names-an-unknown-version", "bad-setting"],
)
def test_known_start_up_failures_are_one_line(
    model_home: Path, tmp_path: Path, env: dict, message: str
) -> None:
    (tmp_path / "routing.yaml").write_text("default: v9\n")
    if "ROUTING_FILE" in env:
        env = {**env, "ROUTING_FILE": str(tmp_path / "routing.yaml")}
    bentoml = Path(sys.executable).parent / "bentoml"
    result = subprocess.run(
        [str(bentoml), "serve", "service:OnnxServing", "--port", "1"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(model_home), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output[-2000:]
