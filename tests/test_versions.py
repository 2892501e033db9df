"""Several model versions side by side, for real: explicit versions, a sticky canary, a shadow,
switching the default under load, refusals at start, and optimized variants."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import BIN, ROOT, BentoServer, run_train, running
from version_models import TRIPLE, serving


@pytest.fixture(scope="module")
def routed(
    two_versions: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BentoServer, Path, str]]:
    """Both versions served; the routing file: the demo by default, v3 as a 10 % canary."""
    home, demo = two_versions
    routing = f"default: {demo}\ncanary: {{version: v3, percent: 10}}\n"
    tmp = tmp_path_factory.mktemp("routed")
    with serving(home, tmp, [demo, TRIPLE], routing, workers=2) as (server, file):
        yield server, file, demo


def post(client: httpx.Client, path: str, x: list[float], **headers: str) -> httpx.Response:
    return client.post(path, json={"x": x}, headers=headers)


def test_two_versions_answer_side_by_side(routed: tuple[BentoServer, Path, str]) -> None:
    server, _, demo = routed
    with httpx.Client(base_url=server.url) as c:
        for version, factor in ((demo.split(":")[1], 2), ("v3", 3), (TRIPLE, 3)):
            r = post(c, "/predict", [1.5], **{"X-Model-Version": version})
            tag = demo if factor == 2 else TRIPLE
            assert r.json() == {"y": [1.5 * factor], "model": tag}
            assert r.headers["X-Model"] == tag
        # V2 by its version path, and the binary route by header.
        v2 = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
        r = c.post("/v2/models/linear-2x/versions/v3/infer", json=v2)
        assert r.json()["outputs"][0]["data"] == [3.0] and r.headers["X-Model"] == TRIPLE
        binary = {"Content-Type": "application/octet-stream", "X-Model-Version": "v3"}
        r = c.post("/predict_binary", content=np.float32([2.0]).tobytes(), headers=binary)
        assert np.frombuffer(r.content, "<f4").tolist() == [6.0] and r.headers["X-Model"] == TRIPLE
        # Batched requests are answered by the default version, and say so.
        r = post(c, "/predict_batched", [1.0])
        assert r.json()["model"] == demo and r.headers["X-Model"] == demo
        # An unknown version: 404 with the served ones named.
        r = post(c, "/predict", [1.0], **{"X-Model-Version": "v9"})
        assert r.status_code == 404 and "v9" in r.json()["error"] and TRIPLE in r.json()["error"]
        meta = c.get("/metadata").json()
        assert set(meta["versions"]) == {demo, TRIPLE}
        assert meta["routing"]["canary"] == {"version": TRIPLE, "percent": 10.0}
        v2_versions = set(c.get("/v2/models/linear-2x").json()["versions"])
        assert v2_versions == {demo.split(":")[1], "v3"}


def test_the_canary_takes_its_share_and_keeps_each_key(
    routed: tuple[BentoServer, Path, str],
) -> None:
    server, _, _ = routed
    answered: dict[str, str] = {}
    with httpx.Client(base_url=server.url) as c:
        for i in range(2000):
            key = f"user-{i}"
            answered[key] = post(c, "/predict", [1.0], **{"X-Request-Key": key}).json()["model"]
        share = sum(tag == TRIPLE for tag in answered.values()) / len(answered)
        print(f"\ncanary share over 2,000 keys: {share:.1%}")
        assert abs(share - 0.10) <= 0.03
        # Sticky: the same key reaches the same version, every time, from either worker.
        for key in ("user-1", "user-7", "user-42", "user-1999"):
            again = {post(c, "/predict", [1.0], **{"X-Request-Key": key}).json()["model"]
                     for _ in range(10)}  # fmt: skip
            assert again == {answered[key]}


def test_switching_the_default_under_load_fails_no_request(
    routed: tuple[BentoServer, Path, str],
) -> None:
    server, routing, demo = routed
    outcomes: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = post(c, "/predict", [1.0], **{"X-Request-Key": "steady"})
                    outcomes.append((time.monotonic(), r.status_code, r.json().get("model", "")))
                except httpx.HTTPError as exc:
                    outcomes.append((time.monotonic(), 0, type(exc).__name__))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        switched = time.monotonic()
        routing.write_text("default: v3\n")  # roll forward: v3 takes all traffic
        time.sleep(3)
        rolled_back = time.monotonic()
        routing.write_text(f"default: {demo}\n")  # roll back
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        routing.write_text(f"default: {demo}\ncanary: {{version: v3, percent: 10}}\n")
    statuses = collections.Counter(status for _, status, _ in outcomes)
    print(f"\n{len(outcomes)} requests during two switches: {dict(statuses)}")
    assert set(statuses) == {200}
    after = {model for at, _, model in outcomes if switched + 1.5 < at < rolled_back}
    back = {model for at, _, model in outcomes if at > rolled_back + 1.5}
    assert after == {TRIPLE} and back == {demo}


def test_the_shadow_is_compared_and_never_answers(
    two_versions: tuple[Path, str], tmp_path: Path
) -> None:
    home, demo = two_versions
    routing = f"default: {demo}\nshadow: v3\n"
    with (
        serving(home, tmp_path, [demo, TRIPLE], routing) as (server, _),
        httpx.Client(base_url=server.url) as c,
    ):
        for _ in range(20):
            r = post(c, "/predict", [1.0, 2.0])
            assert r.json() == {"y": [2.0, 4.0], "model": demo}  # never the shadow's 3x
        time.sleep(0.5)
        metrics = c.get("/metrics").text
    # 2x against 3x on [1, 2]: the largest difference is 2, in the (1, 10] bucket.
    count = re.search(rf'onnx_shadow_max_abs_diff_count\{{version="{TRIPLE}"\}} (\S+)', metrics)
    assert count and float(count.group(1)) == 20, metrics[-2000:]
    in_bucket = re.search(
        rf'onnx_shadow_max_abs_diff_bucket\{{le="1.0",version="{TRIPLE}"\}} (\S+)', metrics
    )
    assert in_bucket and float(in_bucket.group(1)) == 0


def test_versions_that_dont_fit_are_refused_at_start(
    two_versions: tuple[Path, str], tmp_path: Path
) -> None:
    home, demo = two_versions
    wide = ROOT / "tests" / "fixtures" / "models" / "sklearn_linear.onnx"
    run_train(home, "--onnx", str(wide), "--name", "linear-2x", "--version", "wide")
    cases = [
        ({"MODEL_TAGS": f"{demo},linear-2x:wide"}, "must share their inputs and outputs"),
        ({"MODEL_TAGS": demo, "ROUTING_FILE": str(tmp_path / "r.yaml")}, "v3"),
    ]
    (tmp_path / "r.yaml").write_text("default: v3\n")
    for env, message in cases:
        server = BentoServer(home, tmp_path / f"serve-{len(message)}.log", **env)
        try:
            code = server.proc.wait(timeout=90)
        finally:
            server.stop()
        log = server.log_path.read_text()
        assert code != 0 and message in log, log[-2000:]


def test_an_int8_variant_is_saved_with_its_error_and_gain_or_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mlp = ROOT / "benchmarks" / "models" / "mlp.onnx"
    parent = run_train(home, "--onnx", str(mlp), "--name", "mlp").stdout.strip()
    refused = run_train(home, "optimize", parent, "--int8", "--max-error", "1e-9")
    assert refused.returncode == 1 and "more than --max-error" in refused.stdout
    made = run_train(home, "optimize", parent, "--int8", "--max-error", "0.05", "--version", "q8")
    assert made.returncode == 0, made.stdout + made.stderr
    print("\n" + made.stdout.strip())
    listing = subprocess.run(
        [str(BIN / "python"), "-c", "import bentoml, json; m = bentoml.models.get('mlp:q8'); "
         "print(json.dumps(m.info.metadata['optimized']))"],
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(listing.stdout)
    assert report["parent"] == parent and report["optimization"] == "int8"
    assert 0 < report["max_abs_error"] <= 0.05
    assert report["size_bytes"] < report["parent_size_bytes"] / 3
    assert set(report["cost_ms"]) == set(report["parent_cost_ms"]) == {"1", "8", "64", "256"}
    # ...and served as a canary of its parent.
    routing = tmp_path / "routing.yaml"
    default = parent.split(":")[1]
    routing.write_text(f"default: {default}\ncanary: {{version: q8, percent: 50}}\n")
    env = {"MODEL_TAGS": f"{parent},mlp:q8", "ROUTING_FILE": str(routing), "WORKERS": "1"}
    row = np.random.default_rng(0).standard_normal((1, 64)).tolist()
    with (
        running(home, tmp_path / "serve.log", **env) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        answers = [c.post("/predict", json={"x": row}, headers={"X-Request-Key": str(i)}).json()
                   for i in range(40)]  # fmt: skip
    models = {a["model"] for a in answers}
    assert models == {parent, "mlp:q8"}
    y = {a["model"]: np.array(a["y"]) for a in answers}
    assert np.max(np.abs(y[parent] - y["mlp:q8"])) <= 0.05
