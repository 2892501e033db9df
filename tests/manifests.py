"""deploy/k8s rendered and checked offline (loaded as a plugin by tests/conftest.py, for the
`deploy_tools` fixture): `kubectl kustomize` renders an overlay, and
kubernetes-validate checks every resource against the Kubernetes schemas, strictly.

kubernetes-validate's command line reports one error per resource and exits 0 for a kind it
has no schema for; here every error fails, and only the kinds in CUSTOM_KINDS (whose CRDs
the schemas don't carry) may go unchecked by schema: tests/test_deploy.py checks them itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = [
    "overlays/dev",
    "overlays/prod",
    "overlays/canary",
    "overlays/signed",
    "custom-metrics",
    "load-test",
]
# The oldest and the newest Kubernetes minor the manifests are validated against.
KUBERNETES_VERSIONS = ["1.30", "1.37"]
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# An image tag that names one build: <project version>-<content hash> (scripts/build_image.sh),
# or a digest. `latest` and other moving tags are refused.
IMMUTABLE_TAG = re.compile(r"^\d+\.\d+\.\d+-[0-9a-f]{12}$")


def kubectl() -> str:
    """kubectl with kustomize v5 (Debian's kubernetes-client, 1.20, has kustomize v2)."""
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("no kubectl on PATH: deploy/k8s needs kubectl >= 1.27 (kustomize v5)")
    version = subprocess.run(
        [path, "version", "--client"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if not found or int(found.group(1)) < 5:
        raise RuntimeError(f"{path} has no kustomize v5 (it reports: {version.strip()!r})")
    return path


def render(overlay: str | Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay (a path under deploy/k8s, or any folder)."""
    folder = overlay if isinstance(overlay, Path) else K8S / overlay
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(docs: list[dict[str, Any]], version: str) -> list[str]:
    """Every resource that fails strict validation, or whose kind no schema knows, as
    "Kind/name: reason"; an empty list when all are valid."""
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            if (doc.get("apiVersion"), doc.get("kind")) not in CUSTOM_KINDS:
                errors.append(f"{where}: no schema ({exc})")
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")
        except (kubernetes_validate.InvalidSchemaError, TypeError, KeyError) as exc:
            errors.append(f"{where}: {exc!r}")
    return errors


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def service_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def docker_run_args(deployment: dict[str, Any]) -> list[str]:
    """The `docker run` options that run the image as `deployment` declares it: its user,
    read-only root filesystem with the same writable paths (tmpfs for emptyDir), no
    capabilities, no privilege escalation, its environment."""
    pod = deployment["spec"]["template"]["spec"]
    container = service_container(deployment)
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security.get("runAsGroup", security["runAsUser"])
    args = ["--user", f"{uid}:{gid}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    args += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert "emptyDir" in volumes[mount["name"]], f"{mount['name']}: only emptyDir is mapped"
        args += ["--tmpfs", f"{mount['mountPath']}:uid={uid},gid={gid}"]
    for env in container.get("env", []):
        args += ["-e", f"{env['name']}={env['value']}"]
    return args


@pytest.fixture(scope="session")
def deploy_tools() -> None:
    """docker-compose and HAProxy from Debian's packages (scripts/deploy_tools.sh)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy_tools.sh")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
