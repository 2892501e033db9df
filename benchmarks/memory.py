"""What one request can cost in memory: the largest (or worst-shaped) body each route takes
under the default limits, sent to a one-worker `bentoml serve` with default settings, and the
worker's peak resident memory growth while it is answered, per byte of body. Prints a table
(README, Operating it: what a client can cost).

    make bench-memory        (python -m benchmarks.memory)
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.servers import ALL_CPUS, ROOT, start_bentoml

MIB = 1 << 20
Send = Callable[[str], httpx.Response]


def peak_growth(worker: psutil.Process, send: Callable[[], httpx.Response]) -> tuple[float, int]:
    """(MB of RSS growth at the peak, status) while `send` runs."""
    before = peak = worker.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, worker.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        status = send().status_code
    finally:
        done.set()
        thread.join()
    return (peak - before) / MIB, status


def json_cases() -> list[tuple[str, bytes, Send]]:
    rng = np.random.default_rng(0)
    values = (rng.uniform(-1, 1, 1_000_000) * 1e-5).astype(np.float32).astype(np.float64)
    flat = json.dumps({"x": values.tolist()}).encode()
    rows = json.dumps({"x": values[:, None].tolist()}).encode()
    v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [len(values), 1],
                    "datatype": "FP32",
                    "data": values.tolist(),
                }
            ]
        }
    ).encode()
    raw = values.astype(np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [len(values), 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()

    def post(path: str, body: bytes, headers: dict[str, str]) -> Send:
        return lambda url: httpx.post(url + path, content=body, headers=headers, timeout=120)

    js = {"Content-Type": "application/json"}
    octet = {"Content-Type": "application/octet-stream"}
    return [
        ("/predict, 1 M values, flat", flat, post("/predict", flat, js)),
        ("/predict, 1 M rows of one value", rows, post("/predict", rows, js)),
        ("V2 JSON, 1 M values", v2, post("/v2/models/linear-2x/infer", v2, js)),
        (
            "V2 binary, 1 M FP32",
            head + raw,
            post(
                "/v2/models/linear-2x/infer",
                head + raw,
                {"Inference-Header-Content-Length": str(len(head)), **octet},
            ),
        ),
        ("/predict_binary, 1 M FP32", raw, post("/predict_binary", raw, octet)),
    ]


def file_cases(tmp: Path) -> list[tuple[str, bytes, Send]]:
    csv = b"x\n" + b"-0.00000123456789\n" * 10_000_000
    wide = b"x," + b",".join(b"c%d" % i for i in range(100_000)) + b"\n"
    wide += (b"1," + b",".join([b"1"] * 100_000) + b"\n") * 200
    cases = []
    for name, content in (("CSV, 10 M rows", csv), ("CSV, 200 lines of 100,001 cells", wide)):
        path = tmp / f"{len(content)}.csv"
        path.write_bytes(content)

        def send(url: str, path: Path = path) -> httpx.Response:
            with path.open("rb") as f:
                return httpx.post(url + "/predict_file", files={"file": ("f.csv", f)}, timeout=300)

        cases.append((f"/predict_file, {name}", content, send))
    return cases


def image_case(home: Path) -> tuple[str, bytes, Send, dict[str, str]] | None:
    """A 50-megapixel PNG (MAX_IMAGE_PIXELS) for the test CNN, imported into `home`."""
    from PIL import Image

    model = ROOT / "tests" / "fixtures" / "models" / "torch_cnn.onnx"
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_and_save.py"), "--onnx", str(model), "--name", "cnn"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if result.returncode:
        print(result.stderr, file=sys.stderr)
        return None
    buf = io.BytesIO()
    Image.new("RGB", (7071, 7071), (30, 200, 40)).save(buf, "PNG")
    png = buf.getvalue()

    def send(url: str) -> httpx.Response:
        return httpx.post(url + "/predict_image", files={"file": ("a.png", png)}, timeout=120)

    return "/predict_image, 50 MP PNG", png, send, {"MODEL_NAME": "cnn", "BENTOML_HOME": str(home)}


def warm(url: str) -> None:
    """Small requests to every route: what the first request of a kind loads, loaded."""
    httpx.post(url + "/predict", json={"x": [1.0]})
    v2 = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    httpx.post(url + "/v2/models/linear-2x/infer", json=v2)
    octet = {"Content-Type": "application/octet-stream"}
    httpx.post(url + "/predict_binary", content=b"\0\0\0\0", headers=octet)
    httpx.post(url + "/predict_file", files={"file": ("a.csv", b"x\n1\n")})
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    httpx.post(url + "/predict_image", files={"file": ("a.png", png.getvalue())})


def measure(name: str, env: dict[str, str], cases: list, tmp: Path) -> list[str]:
    """Each case on a fresh one-worker server, warmed up with small requests: the growth is
    what the case itself costs, not what an earlier one left in the allocator's pools."""
    lines = []
    for label, body, send in cases:
        server = start_bentoml(name, tmp, ALL_CPUS, {"WORKERS": "1", **env})
        try:
            (worker,) = [
                p for p in server.tree() if "_bentoml_impl.worker" in " ".join(p.cmdline())
            ]
            warm(server.url)
            growth, status = peak_growth(worker, lambda s=send, u=server.url: s(u))
        finally:
            server.stop()
        per_byte = growth * MIB / len(body)
        lines.append(
            f"| {label} | {len(body) / MIB:,.1f} | {status} | {growth:,.0f} | {per_byte:.1f} |"
        )
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("| request | body MB | status | worker RSS growth MB | bytes per body byte |")
        print("|---|---|---|---|---|")
        for case in json_cases() + file_cases(tmp):
            for line in measure("memory-demo", {}, [case], tmp):
                print(line, flush=True)
        image = image_case(tmp / "home")
        if image is not None:
            label, body, send, env = image
            for line in measure("memory-image", env, [(label, body, send)], tmp):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
