"""What operators watch, for real: the alerting rules checked and unit-tested by promtool, and
a real Prometheus on loopback scraping a running service (two versions, a canary, a shadow)
while every panel of the Grafana dashboard returns data through Prometheus's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, BentoServer
from version_models import TRIPLE, serving

from harness.local_server import ServerProcess, free_port

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's prometheus package (prometheus, promtool), installed if missing; skipped only
    outside CI if it can't be had."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prometheus.sh")], capture_output=True, text=True
    )
    if result.returncode != 0:
        message = f"no Prometheus could be installed: {(result.stdout + result.stderr)[-1500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return "promtool"


def test_the_alerting_rules_check_and_their_unit_tests_pass(promtool: str) -> None:
    checked = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus", capture_output=True, text=True,
    )  # fmt: skip
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


@pytest.fixture(scope="module")
def watched(
    two_versions: tuple[Path, str],
    promtool: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BentoServer, str]]:
    """The service with v3 as a canary and a shadow, and Prometheus scraping it every second."""
    home, demo = two_versions
    tmp = tmp_path_factory.mktemp("monitoring")
    routing = f"default: {demo}\ncanary: {{version: v3, percent: 20}}\nshadow: v3\n"
    with serving(home, tmp, [demo, TRIPLE], routing) as (server, _):
        port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{DEPLOY / 'prometheus' / 'alerts.yml'}]\n"
            "scrape_configs:\n"
            "  - job_name: onnx-serving\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
        )
        cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
        prometheus = ServerProcess("prometheus", cmd, port, {}, tmp / "prometheus.log", tmp)
        try:
            prometheus.wait_ready("/-/ready", timeout=60)
            yield server, prometheus.url
        finally:
            prometheus.stop()


def traffic(url: str, seconds: float) -> None:
    """Predictions by key (default and canary), batched ones, and a few bad requests."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url) as c:
        i = 0
        while time.monotonic() < deadline:
            c.post("/predict", json={"x": [1.0, 2.0]}, headers={"X-Request-Key": f"k{i}"})
            c.post("/predict_batched", json={"x": [1.0]})
            if i % 10 == 0:
                c.post("/predict", json={"x": ["not a number"]})
                c.post("/predict", json={"x": [1e39]})
            i += 1


def test_prometheus_scrapes_the_service_and_every_panel_has_data(
    watched: tuple[BentoServer, str],
) -> None:
    server, prometheus = watched
    load = threading.Thread(target=traffic, args=(server.url, 12))
    load.start()
    load.join()
    time.sleep(3)  # two more scrapes after the last request
    empty = []
    with httpx.Client(base_url=prometheus) as c:
        targets = c.get("/api/v1/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
        for title, expr in dashboard_queries():
            body = c.get("/api/v1/query", params={"query": expr}).json()
            assert body["status"] == "success", (title, body)
            if not body["data"]["result"]:
                empty.append(title)
        rules = c.get("/api/v1/rules").json()["data"]["groups"]
        shadow = c.get(
            "/api/v1/query", params={"query": "sum(onnx_shadow_max_abs_diff_count)"}
        ).json()
    assert not empty, f"panels without data: {empty}"
    assert {r["name"] for g in rules for r in g["rules"]} >= {
        "OnnxModelErrorRatioHigh",
        "OnnxModelLatencyP99AboveSLA",
        "OnnxModelNotReady",
        "OnnxModelShadowDifferenceHigh",
    }
    assert float(shadow["data"]["result"][0]["value"][1]) > 0  # shadow differences recorded
