"""deploy/: the Kubernetes overlays, the Compose file and the CI templates, validated offline
(no cluster, registry or CI service is reachable here), and what no schema checks: selectors,
probes, ports, the HPA's and PDB's targets, immutable image tags, the stop timing."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import (
    IMMUTABLE_TAG,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    ROOT,
    docker_run_args,
    one,
    render,
    schema_errors,
    service_container,
)

DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_resource_is_valid(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    assert rendered[overlay], f"{overlay} rendered nothing"
    assert schema_errors(rendered[overlay], version) == []


def test_the_validation_fails_on_what_it_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The wrapper turns each kind of mistake into an error: an unknown field (strict), a wrong
    type, and an apiVersion no schema knows (kubernetes-validate's CLI exits 0 on that)."""
    deployment = one(rendered["overlays/prod"], "Deployment", "onnx-serving")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["revisionHistoryLimit"] = "ten"
    unknown = copy.deepcopy(deployment)
    unknown["apiVersion"] = "apps/v1beta9"
    for broken in (typo, wrong_type, unknown):
        assert len(schema_errors([broken], KUBERNETES_VERSIONS[-1])) == 1


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize(
    "overlay", ["overlays/dev", "overlays/prod", "overlays/canary", "overlays/signed"]
)
def test_selectors_probes_ports_and_targets_agree(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    service = one(docs, "Service", "onnx-serving")
    for deployment in deployments:
        labels = pod_labels(deployment)
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        assert selects(service["spec"]["selector"], labels), "the Service misses these pods"
        container = service_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # BentoML's port in the image (EXPOSE 3000, `bentoml serve` with no arguments), and
        # gRPC's (EXPOSE 8001, GRPC_PORT's default).
        assert ports == {"http": 3000, "grpc": 8001}
        assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["grpc"] == {"port": 8001}  # grpc.health.v1
        image, _, tag = container["image"].rpartition(":")
        assert image.endswith("onnx-serving") and IMMUTABLE_TAG.match(tag), container["image"]
    # Stable and canary Deployments never select each other's pods.
    for a in deployments:
        for b in deployments:
            if a is not b:
                assert not selects(a["spec"]["selector"]["matchLabels"], pod_labels(b))
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", "http"),
        ("grpc", "grpc"),
    ]
    stable = one(docs, "Deployment", "onnx-serving")
    hpa = one(docs, "HorizontalPodAutoscaler", "onnx-serving")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "onnx-serving"
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "onnx-serving")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(stable))
    policy = one(docs, "NetworkPolicy", "onnx-serving")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(stable))
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == ["http", "grpc"]
    monitor = one(docs, "ServiceMonitor", "onnx-serving")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # With an HPA, prod leaves the replica count to it (an `apply` would reset it otherwise).
    if overlay != "overlays/dev":
        assert "replicas" not in stable["spec"]


def test_the_stop_fits_in_the_grace_period(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """preStop's pause, then SIGTERM: the drain and the last answers finish before SIGKILL."""
    deployment = one(rendered["overlays/prod"], "Deployment", "onnx-serving")
    container = service_container(deployment)
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    env = {e["name"]: float(e["value"]) for e in container["env"] if e["name"].startswith("DRAIN")}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause + env["DRAIN_SECONDS"] + env["DRAIN_CLOSE_GRACE_S"] + 2 <= grace
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a new pod is ready before an old one goes


def test_the_pod_runs_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The restricted Pod Security Standard's requirements, and the image's own user."""
    deployment = one(rendered["overlays/prod"], "Deployment", "onnx-serving")
    pod = deployment["spec"]["template"]["spec"]
    container = service_container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False
    assert "--read-only" in docker_run_args(deployment)


def test_the_canary_is_one_pod_of_another_tag(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["overlays/canary"]
    stable = service_container(one(docs, "Deployment", "onnx-serving"))["image"]
    canary = one(docs, "Deployment", "onnx-serving-canary")
    assert canary["spec"]["replicas"] == 1
    assert service_container(canary)["image"] != stable
    assert pod_labels(canary)["track"] == "canary"


def test_the_load_test_runs_the_projects_locustfile(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["load-test"]
    master = one(docs, "Job", "locust-master")["spec"]["template"]["spec"]["containers"][0]
    worker = one(docs, "Job", "locust-worker")["spec"]["template"]["spec"]["containers"][0]
    service = one(docs, "Service", "locust-master")
    assert "--master" in master["args"] and "--host=http://onnx-serving" in master["args"]
    assert f"--master-host={service['metadata']['name']}" in worker["args"]
    assert service["spec"]["ports"][0]["port"] == 5557
    assert (ROOT / "load_tests" / "Dockerfile").read_text().count("COPY load_tests/") == 1


def compose_env() -> dict[str, str]:
    return {**os.environ, "ONNX_MODEL_TAG": "0.1.0-3f9a1c2b7d4e"}


def test_compose_file_is_valid(
    deploy_tools: None, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """docker-compose (Debian's 1.29.2) and the Compose Specification's schema both accept it;
    its volumes exist, and it runs the service as the Deployment does."""
    compose = DEPLOY / "compose.yaml"
    check = subprocess.run(
        ["docker-compose", "-f", str(compose), "config"],
        capture_output=True, text=True, env=compose_env(), timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    config = yaml.safe_load(check.stdout)
    assert set(config["services"]) == {
        "service", "prometheus", "grafana", "locust-master", "locust-worker"
    }  # fmt: skip
    for service in config["services"].values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), source
    schema = subprocess.run(
        [VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", compose],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert schema.returncode == 0, schema.stdout + schema.stderr
    service = config["services"]["service"]
    deployment = one(rendered["overlays/prod"], "Deployment", "onnx-serving")
    run_args = docker_run_args(deployment)
    assert service["user"] == run_args[1] and service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in service_container(deployment)["volumeMounts"]}
    assert {t.split(":")[0] for t in service["tmpfs"]} == mounts
    # Without the tag, Compose refuses to start rather than run some `latest`.
    env = {k: v for k, v in compose_env().items() if k != "ONNX_MODEL_TAG"}
    untagged = subprocess.run(
        ["docker-compose", "-f", str(compose), "config", "-q"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert untagged.returncode != 0 and "ONNX_MODEL_TAG" in untagged.stderr


@pytest.mark.parametrize(
    ("template", "schema"),
    [("github-actions.yml", "vendor.github-workflows"), ("gitlab-ci.yml", "vendor.gitlab-ci")],
)
def test_ci_templates_are_valid(template: str, schema: str) -> None:
    path = DEPLOY / "ci" / template
    result = subprocess.run(
        [VENV_BIN / "check-jsonschema", "--builtin-schema", schema, path],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    # What the issue asks each to do: the tests, the image, the gated load test, and the
    # immutable and moving tags on a release.
    for step in ("make test", "scripts/build_image.sh", "make load-test-image", "latest"):
        assert step in text, f"{template} lacks {step}"
    assert '"${REF#*:}"' in text  # the image's own immutable tag is pushed


def test_ci_template_schema_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "gitlab-ci.yml"
    broken.write_text("image:\n  stage: test\n  script: [make test]\n")  # `image` is reserved
    result = subprocess.run(
        [VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.gitlab-ci", broken],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_the_signed_overlay_mounts_the_public_key_that_model_verify_key_names(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """overlays/signed: prod, with the trusted public key from a ConfigMap, read-only, and
    MODEL_VERIFY_KEY naming the file in the mount (docs/signing.md)."""
    deployment = one(rendered["overlays/signed"], "Deployment", "onnx-serving")
    pod = deployment["spec"]["template"]["spec"]
    container = service_container(deployment)
    volume = next(v for v in pod["volumes"] if v["name"] == "verify-key")
    assert volume["configMap"]["name"] == "model-verify-key"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "verify-key")
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODEL_VERIFY_KEY"].startswith(mount["mountPath"] + "/")
    prod = one(rendered["overlays/prod"], "Deployment", "onnx-serving")
    assert deployment["metadata"]["namespace"] == prod["metadata"]["namespace"]
