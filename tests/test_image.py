"""The Docker image, built with `bentoml build` + `bentoml containerize`, run for real.

Fixtures come from tests/image_support.py; the image is built once per run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from endpoint_checks import JSON, check_predict, check_predict_file_csv, check_predict_file_npy
from image_support import (
    FIGURES,
    ROOT,
    BuiltImage,
    Container,
    SignedImage,
    docker,
    median_seconds,
    refused_start,
)

pytestmark = pytest.mark.image

# Cold start = `docker run` to /readyz 200: about 2 s on a quiet 2-core machine, printed in
# the summary (median of COLD_RUNS). Speed is a figure, not a timed test on a shared machine:
# the test only catches a start that hangs or loops (the best run must be under 10 s).
COLD_START_LIMIT_S = 10.0
STOP_LIMIT_S = 5.0
# The target (issue 21): under 350 MB. 354 MB before ONNX Runtime's offline tools (9 MB) left
# the image; 346 MB after; 365 MB with gRPC (grpcio, 19 MB), and 336 MB without ONNX
# Runtime's C API library (29 MB), which the Python module doesn't load.
SIZE_LIMIT_MB = 350
COLD_RUNS = 3


@pytest.fixture(scope="module")
def http(image_url: str) -> httpx.Client:
    with httpx.Client(base_url=image_url, timeout=30) as client:
        yield client


def labels(ref: str) -> dict[str, str]:
    return json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", ref))


# --- every endpoint, answered from inside the container -----------------------------------


@pytest.mark.parametrize("route", ["/predict", "/predict_batched"])
def test_predict(http: httpx.Client, route: str, built_image: BuiltImage) -> None:
    check_predict(http, route, labels(built_image.ref)["onnx-serving.model.tag"])


def test_bad_input_is_a_400_with_reason(http: httpx.Client) -> None:
    r = http.post("/predict", content='{"x": [NaN]}', headers=JSON)
    assert r.status_code == 400 and "not a finite float32" in r.text


def test_predict_file(http: httpx.Client) -> None:
    check_predict_file_csv(http)
    check_predict_file_npy(http, rows=101)


def test_metadata_is_the_labelled_model(http: httpx.Client, built_image: BuiltImage) -> None:
    meta = http.get("/metadata").json()
    image_labels = labels(built_image.ref)
    assert meta["tag"] == image_labels["onnx-serving.model.tag"]
    assert meta["sha256"] == image_labels["onnx-serving.model.sha256"]
    assert meta["signature"]["inputs"][0]["dtype"] == "tensor(float)"


def test_v2_over_grpc_with_tritonclient(
    image_container: Container, built_image: BuiltImage
) -> None:
    """The image serves the Open Inference Protocol over gRPC too (GRPC_PORT), with its health
    service, as Triton's client expects."""
    import grpc
    import numpy as np
    import tritonclient.grpc as tg
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = f"127.0.0.1:{image_container.grpc_port}"
    client = tg.InferenceServerClient(address)
    name, version = labels(built_image.ref)["onnx-serving.model.tag"].split(":")
    assert client.is_server_ready() and client.is_model_ready(name)
    x = tg.InferInput("x", [2, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0], [2.5]], dtype=np.float32))
    result = client.infer(name, [x])
    assert result.as_numpy("y").ravel().tolist() == [2.0, 5.0]
    assert result.get_response().model_version == version
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # SERVING


def test_a_signed_model_s_image_verifies_it_at_start(signed_image: SignedImage) -> None:
    key = [
        "-v",
        f"{signed_image.public}:/keys/team.pub:ro",
        "-e",
        "MODEL_VERIFY_KEY=/keys/team.pub",
    ]
    container = Container(signed_image.ref, run_args=key)
    try:
        container.start(timeout=90)
        integrity = httpx.get(f"{container.url}/metadata").json()["integrity"]
        answer = httpx.post(f"{container.url}/predict", json={"x": [1.5]}).json()
    finally:
        container.remove()
    assert integrity["check"] == "signature" and integrity["verified_with"] == "team.pub"
    assert answer["y"] == [3.0]


def test_the_image_refuses_what_its_key_did_not_sign(
    signed_image: SignedImage, built_image: BuiltImage, tmp_path: Path
) -> None:
    def key(path: Path) -> list[str]:
        return ["-v", f"{path}:/keys/team.pub:ro", "-e", "MODEL_VERIFY_KEY=/keys/team.pub"]

    # Signed by another key.
    out = refused_start(signed_image.ref, *key(signed_image.other))
    assert "refusing to serve linear-2x:" in out and "signed by another key" in out, out
    # A file of the model changed after signing (mounted over the image's own).
    yaml = tmp_path / "model.yaml"
    yaml.write_text((signed_image.model_dir / "model.yaml").read_text() + "# edited\n")
    yaml.chmod(0o644)
    inside = f"/home/bentoml/bento/models/linear-2x/{signed_image.model_dir.name}/model.yaml"
    out = refused_start(signed_image.ref, *key(signed_image.public), "-v", f"{yaml}:{inside}:ro")
    assert "a file changed after it was signed: model.yaml" in out, out
    # An image of an unsigned model, told to verify: nothing signed it.
    out = refused_start(built_image.ref, *key(signed_image.public))
    assert "refusing to serve linear-2x:" in out and "it is not signed" in out, out


def test_health_and_metrics(http: httpx.Client) -> None:
    assert http.get("/readyz").status_code == 200
    assert http.get("/livez").status_code == 200
    http.post("/predict", json={"x": [1.0]}, headers=JSON)
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert re.search(r'request_total\{[^}]*endpoint="/predict"', metrics.text), metrics.text[:2000]


# --- what the image is ---------------------------------------------------------------------


def test_tags_and_labels(built_image: BuiltImage) -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    # Immutable tag: project version + content hash; plus the moving `latest`.
    assert re.fullmatch(rf"onnx-serving:{re.escape(version)}-[0-9a-f]{{12}}", built_image.ref)
    assert {built_image.ref, "onnx-serving:latest"} <= set(built_image.tags)
    got = labels(built_image.ref)
    assert got["org.opencontainers.image.version"] == version
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert got["org.opencontainers.image.revision"].removesuffix("-dirty") == revision
    assert got["onnx-serving.bento"] == built_image.ref
    assert re.fullmatch(r"[0-9a-f]{64}", got["onnx-serving.model.sha256"])
    assert got["onnx-serving.model.tag"].startswith("linear-2x:")


def test_healthcheck_probes_readyz(image_container: Container) -> None:
    """The image's own HEALTHCHECK command succeeds inside the serving container."""
    check = json.loads(
        docker("inspect", "-f", "{{json .Config.Healthcheck}}", image_container.name)
    )
    assert check["Test"][0] == "CMD" and "/readyz" in check["Test"][-1]
    docker("exec", image_container.name, *check["Test"][1:], timeout=30)


def test_runs_as_non_root(image_container: Container) -> None:
    assert docker("exec", image_container.name, "id", "-u") != "0"
    # PID 1 is the server itself (BentoML's entrypoint execs it), as that user.
    status = docker("exec", image_container.name, "cat", "/proc/1/status")
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
    assert uid and uid.group(1) != "0"
    cmdline = docker("exec", image_container.name, "cat", "/proc/1/cmdline").replace("\0", " ")
    assert "bentoml serve" in cmdline


def test_no_compilers_git_caches_or_onnx(built_image: BuiltImage) -> None:
    script = (
        "for c in gcc cc g++ make git curl pip pip3 uv; do command -v $c; done; "
        "ls /root/.cache /var/cache/apt/archives/*.deb 2>/dev/null; "
        "ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$'; "
        "python3 -c 'import onnx' 2>/dev/null && echo onnx-importable; true"
    )
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", built_image.ref,
                   "-c", script)  # fmt: skip
    assert found == "", f"the image should not contain: {found}"


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_sbom_beside_the_image_lists_exactly_its_packages(built_image: BuiltImage) -> None:
    sbom = ROOT / "dist" / "images" / f"{built_image.ref.replace(':', '-')}.sbom.cdx.json"
    doc = json.loads(sbom.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"].startswith("1.")
    listed = {(normalized(c["name"]), c["version"]) for c in doc["components"]}
    assert all(c["purl"].startswith("pkg:pypi/") for c in doc["components"])
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()]))"
    )
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "/app/.venv/bin/python",
                 built_image.ref, "-c", script)  # fmt: skip
    installed = {(normalized(n), v) for n, v in json.loads(out)}
    assert listed == installed
    # ...which is exactly the hashed lock the image was built from.
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pins = {tuple(line.split(" ")[0].split("==")) for line in lock if re.match(r"[a-z0-9]", line)}
    assert {(normalized(n), v) for n, v in pins} == installed


def test_image_size(built_image: BuiltImage) -> None:
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", built_image.ref)) / 1e6
    FIGURES["image size"] = f"{size_mb:.0f} MB ({built_image.ref})"
    assert size_mb < SIZE_LIMIT_MB


# --- start and stop, in short-lived containers of their own ---------------------------------


@pytest.fixture(scope="module")
def short_runs(built_image: BuiltImage) -> list[tuple[float, float, int]]:
    """(cold start s, `docker stop` s, exit code) of COLD_RUNS fresh containers."""
    runs = []
    for _ in range(COLD_RUNS):
        container = Container(built_image.ref)
        try:
            container.start()
            started = time.monotonic()
            docker("stop", "-t", "20", container.name, timeout=60)
            stopped = time.monotonic() - started
            assert container.ready_seconds is not None
            runs.append((container.ready_seconds, stopped, container.state()["ExitCode"]))
            if len(runs) == 1:  # what each start-up step took (the service logs it)
                steps = [
                    line.split("start-up ", 1)[1]
                    for line in container.logs().splitlines()
                    if "start-up (" in line
                ]
                assert any("ready to serve" in step for step in steps), container.logs()
                FIGURES["cold start steps (first run)"] = "\n  " + "\n  ".join(steps)
        finally:
            container.remove()
    # The machine's load moves cold start most: printed beside it.
    load = f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    FIGURES["cold start (docker run -> /readyz 200)"] = (
        f"{median_seconds([r[0] for r in runs])}; {load}"
    )
    FIGURES["docker stop (SIGTERM -> exited)"] = median_seconds([r[1] for r in runs])
    return runs


def test_cold_start(short_runs: list[tuple[float, float, int]]) -> None:
    assert min(r[0] for r in short_runs) < COLD_START_LIMIT_S


def test_stops_cleanly_on_sigterm(short_runs: list[tuple[float, float, int]]) -> None:
    for _, stop_seconds, exit_code in short_runs:
        # Within the grace period and exit 0: the server handled SIGTERM, no SIGKILL (137).
        assert stop_seconds < STOP_LIMIT_S
        assert exit_code == 0
