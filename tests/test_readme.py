"""The README's own commands, run exactly as written, in a copy of the project."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
from conftest import ROOT
from fixture_models import CASES, MODELS

from harness.local_server import ServerProcess, free_port

README = (ROOT / "README.md").read_text()
# What a user's shell has: nothing of the test run's own settings or of the make around it.
DROP = {"BENTOML_HOME", "MODEL_NAME", "MODEL_TAG", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}


def section_commands(heading: str) -> list[str]:
    """The commands of the first bash block under `heading`, comments stripped."""
    section = README.split(f"\n## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = (line.split("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def project_copy(dest: Path) -> Path:
    """The project's files (as git sees them) and its .venv, in `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)  # keeps mtimes: make sees .venv as current
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def test_import_then_serve_exactly_as_the_readme_says(tmp_path: Path) -> None:
    commands = section_commands("Serving your own model")
    import_cmd, serve_cmd = commands[0], commands[1]
    assert (
        import_cmd == ".venv/bin/python train_and_save.py --onnx path/to/model.onnx --name my-model"
    )
    assert serve_cmd == "MODEL_NAME=my-model make serve"

    project = project_copy(tmp_path / "project")
    model_file = project / "path" / "to" / "model.onnx"
    model_file.parent.mkdir(parents=True)
    shutil.copy(MODELS / "sklearn_linear.onnx", model_file)
    env = {k: v for k, v in os.environ.items() if k not in DROP}

    imported = subprocess.run(
        import_cmd, shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr
    tag = imported.stdout.strip()
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert tag == f"my-model:sha256-{sha[:16]}"
    # Into the project's store, the one `make serve` and the image use.
    assert (
        project / ".bentoml" / "models" / "my-model" / tag.split(":")[1] / "model.onnx"
    ).exists()

    port = free_port()
    server = ServerProcess(
        "make serve",
        # `env -u`: ServerProcess adds the test run's environment; take its settings out again.
        ["env", *(f"--unset={k}" for k in sorted(DROP)), "bash", "-c", f"PORT={port} {serve_cmd}"],
        port,
        env,
        tmp_path / "serve.log",
        project,
    )
    try:
        server.wait_ready(timeout=180)
        meta = httpx.get(f"{server.url}/metadata").json()
        assert (meta["tag"], meta["sha256"]) == (tag, sha)
        assert meta["file"].startswith(str(project / ".bentoml"))
        x = CASES["sklearn_linear"]["inputs"]["X"]
        r = httpx.post(f"{server.url}/predict", json={"x": x})
        assert r.status_code == 200 and r.json()["model"] == tag
        want = np.array(CASES["sklearn_linear"]["outputs"]["variable"]).reshape(-1)
        np.testing.assert_allclose(r.json()["y"], want, rtol=1e-4)
    finally:
        server.stop()
    # `make serve` made the demo under its own name only; my-model holds the user's file only.
    models = project / ".bentoml" / "models"
    assert sorted(p.name for p in (models / "my-model").iterdir() if p.is_dir()) == [
        tag.split(":")[1]
    ]
    assert (models / "linear-2x").is_dir()


def test_if_missing_only_ever_makes_the_demo(tmp_path: Path) -> None:
    from conftest import run_train

    for args in (["--if-missing", "--name", "my-model"], ["--if-missing", "--onnx", "m.onnx"]):
        result = run_train(tmp_path / "home", *args)
        assert result.returncode == 2
        assert "--if-missing only creates the demo model linear-2x" in result.stderr
