"""The fence (_patches/__init__.py): every patch checked before the service starts."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from conftest import ROOT

from onnx_serving import _patches
from onnx_serving._patches import PatchError, Target

NAMES = [
    "uvicorn-http-protocol",
    "asyncio-fair-accept",
    "uvicorn-drain",
    "bentoml-request-timeout",
    "bentoml-route-metrics",
    "bentoml-greedy-dispatcher",
    "bentoml-feeds-container",
]


def test_every_patch_fits_the_pinned_versions_and_says_why() -> None:
    _patches.check()
    patches = _patches.patches()
    assert [p.name for p in patches] == NAMES
    for patch in patches:
        assert patch.versions and patch.targets and patch.why, patch.name
        # The upstream issue it works around, or the report to file.
        assert "#" in patch.upstream or "to file" in patch.upstream, patch.name


@pytest.mark.parametrize(
    ("module", "attribute"),
    [
        ("uvicorn.config", "HTTP_PROTOCOLS"),
        ("uvicorn.server", "ServerState"),
        ("bentoml._internal.server.http.traffic", "TimeoutMiddleware"),
        ("bentoml._internal.marshal.dispatcher", "CorkDispatcher"),
        ("_bentoml_impl.server.app", "CorkDispatcher"),
        ("bentoml._internal.runner.container", "DataContainerRegistry"),
    ],
)
def test_an_attribute_renamed_upstream_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, module: str, attribute: str
) -> None:
    target = importlib.import_module(module)
    monkeypatch.setattr(target, f"{attribute}_renamed", getattr(target, attribute), raising=False)
    monkeypatch.delattr(target, attribute)
    with pytest.raises(PatchError, match=rf"{module}\.{attribute}[\w.]* is gone"):
        _patches.check()


def test_a_private_name_no_longer_used_fails_the_check() -> None:
    moved = Target("bentoml._internal.marshal.dispatcher", "CorkDispatcher", uses=("self._q2",))
    assert (
        moved.problem()
        == "bentoml._internal.marshal.dispatcher.CorkDispatcher no longer uses self._q2"
    )
    assert Target("uvicorn.no_such_module").problem() == "uvicorn.no_such_module is gone"


def test_another_release_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda d: "1.4.40" if d == "bentoml" else real(d)
    )
    with pytest.raises(PatchError, match=r"written for bentoml 1\.4\.39, found 1\.4\.40"):
        _patches.check()


def test_the_service_refuses_to_start_with_one_line_when_a_patch_no_longer_fits() -> None:
    """An upgrade-shaped break (uvicorn's ServerState renamed) stops the service module's
    import, as `bentoml serve` does it, with one `error:` line and no traceback."""
    script = (
        "import uvicorn.server as s; s.State = s.ServerState; del s.ServerState; import service"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: the service's patches"), done.stderr
    assert "cannot import name 'ServerState' from 'uvicorn.server'" in done.stderr
    assert "Traceback" not in done.stderr


# Patches whose in_effect() needs no running event loop.
LOOPLESS = (
    "uvicorn-http-protocol",
    "bentoml-greedy-dispatcher",
    "bentoml-request-timeout",
    "bentoml-route-metrics",
)


def test_bentoml_serve_checks_versions_and_the_workers_every_private_name() -> None:
    """`bentoml serve` itself (no worker index) checks the pinned versions without importing
    the patched app modules and applies nothing (it runs no app); a worker checks every
    target and applies every patch."""
    script = (
        "import sys, bentoml; from onnx_serving import _patches\n"
        f"LOOPLESS = {LOOPLESS!r}\n"
        "_patches.install(worker=False)\n"
        "print('_bentoml_impl.server.app' in sys.modules)\n"
        "loopless = [p for p in _patches.patches() if p.name in LOOPLESS]\n"
        "print(any(p.in_effect() for p in loopless))\n"
        "_patches.install()\n"
        "print('_bentoml_impl.server.app' in sys.modules)\n"
        "print(all(p.in_effect() for p in loopless))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "True"]
