"""Every patch is in effect in every running worker (service tier)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import running

from onnx_serving import _patches


@pytest.mark.service
def test_every_patch_is_in_effect_in_every_running_worker(model_home: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    names = [p.name for p in _patches.patches()]

    def in_effect() -> list[str]:
        text = log.read_text(errors="replace")
        return [ln for ln in text.splitlines() if "patches in effect:" in ln]

    with running(model_home, log, WORKERS="2"):
        # /readyz answers once one worker is up; the other may still be starting.
        deadline = time.monotonic() + 60
        while len(in_effect()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    lines = in_effect()
    assert len(lines) == 2, log.read_text()[-3000:]
    assert all(ln.endswith("patches in effect: " + ", ".join(names)) for ln in lines), lines
