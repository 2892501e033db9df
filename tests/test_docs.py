"""The documentation site builds with warnings as errors, and its commands are the tested
ones."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from test_readme import DROP, project_copy

from harness.local_server import ServerProcess, free_port

MKDOCS = Path(sys.executable).parent / "mkdocs"


def build(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "-f", str(project / "mkdocs.yml"), "-d", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    pages = [p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md")]
    html = [p.parent if p.name == "index.md" else p.with_suffix("") for p in pages]
    missing = [p for p in html if not (tmp_path / "site" / p / "index.html").is_file()]
    assert len(pages) > 15 and not missing, missing


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "operating.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md#nothing).\n")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr


def test_the_docs_and_the_readme_give_the_same_tested_commands() -> None:
    from test_readme import section_commands

    readme = section_commands("Serving your own model")
    page = (ROOT / "docs" / "your-model.md").read_text()
    block = page.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [ln.split("  #")[0].strip() for ln in block.splitlines()]
    assert [c for c in commands if c and not c.startswith("#")] == readme


def blocks(page: str, language: str) -> list[str]:
    """The fenced blocks of `language` in a docs page, in order."""
    text = (ROOT / "docs" / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blanks dropped."""
    joined = block.replace("\\\n", " ")
    lines = (line.split("  #")[0].strip() for line in joined.splitlines())
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def run_as_written(cmds: list[str], project: Path, log: Path) -> list[str]:
    """Each command in `project` as a user's shell would run it; `make serve` is started on a
    free port (the commands after it call that port instead of 3000) and stopped at the end.
    The outputs of the commands, in order."""
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    server, outputs, port = None, [], free_port()
    try:
        unset = [f"--unset={k}" for k in sorted(DROP)]
        for cmd in cmds:
            if cmd.endswith("make serve"):
                server = ServerProcess(
                    "make serve",
                    ["env", *unset, "bash", "-c", f"PORT={port} {cmd}"],
                    port,
                    env,
                    log,
                    project,
                )
                server.wait_ready(timeout=180)
                continue
            cmd = cmd.replace("localhost:3000", f"127.0.0.1:{port}")
            done = subprocess.run(
                cmd, shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=180
            )
            assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"
            outputs.append(done.stdout)
    finally:
        if server is not None:
            server.stop()
    return outputs


def exporter_example(page: str, tmp_path: Path, served: bool) -> tuple[str, list[str]]:
    """A page's first Python block, then its first bash block (only the import unless
    `served`), in a copy of the project: what the Python block printed, and each command's
    output."""
    project = project_copy(tmp_path / "project")
    # Saved as a file, as a user would (TorchScript reads a class's source from its file).
    (project / "example.py").write_text(blocks(page, "python")[0])
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=project, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    bash = commands(blocks(page, "bash")[0])
    return done.stdout, run_as_written(bash if served else bash[:1], project, tmp_path / "log")


def test_the_scikit_learn_exporter_example_runs_as_written(tmp_path: Path) -> None:
    _, (imported,) = exporter_example("exporters/scikit-learn.md", tmp_path, served=False)
    assert imported.startswith("iris:sha256-")


def test_the_pytorch_exporter_example_answers_as_pytorch(tmp_path: Path) -> None:
    printed, (imported, answer) = exporter_example("exporters/pytorch.md", tmp_path, served=True)
    assert imported.startswith("mlp:sha256-")
    want = json.loads(printed.splitlines()[-1])  # after the exporter's progress lines
    got = json.loads(answer)["y"]
    assert len(got) == len(want) == 1 and len(got[0]) == 2
    assert all(abs(g - w) < 1e-5 for g, w in zip(got[0], want[0], strict=True)), (got, want)


def test_the_torchscript_example_converts_and_serves_as_written(tmp_path: Path) -> None:
    _, (tag, metadata) = exporter_example("exporters/torchscript.md", tmp_path, served=True)
    assert tag.startswith("net:sha256-")
    meta = json.loads(metadata)
    source = meta["metadata"]["converted_from"]
    assert source["format"] == "TorchScript" and source["check"]["batch"] == "dynamic"
    assert source["check"]["max_abs_diff"] < 1e-4
    (spec,) = meta["signature"]["inputs"]
    assert spec["name"] == "image" and spec["shape"] == ["batch", 3, 32, 32]


def test_the_image_example_runs_as_written(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    cmds = commands(blocks("images.md", "bash")[0])
    assert cmds[1] == "MODEL_NAME=colours make serve"
    imported, answer = run_as_written(cmds, project, tmp_path / "serve.log")
    assert imported.startswith("colours:sha256-")
    top = json.loads(answer)["top"]
    assert top[0]["label"] == "green" and top[0]["probability"] > 0.99 and len(top) == 2
