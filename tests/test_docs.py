"""The documentation site builds with warnings as errors, and its commands are the tested
ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

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
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")} | {"index"}
    assert pages <= built, pages - built


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
