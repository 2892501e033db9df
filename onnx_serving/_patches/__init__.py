"""Every reach into BentoML's, uvicorn's or asyncio's internals, fenced: one `install()`.

Each patch module states what it changes, why, and the upstream issue it works around (or
the report to file where none exists), and declares a `PATCH`: the versions it was written
for, the private names it relies on, how to apply it and how to tell it is in effect.
`install()` checks every version and target first and refuses to start (one `error:` line)
if anything moved, so an upgrade that renames an attribute stops the service instead of
silently turning off load shedding, read timeouts, the drain or the batching fix; the
worker then checks at start that each patch is in effect (`verify()`). Nowhere else may
import private modules: ruff's banned-api rule (pyproject.toml) enforces it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("bentoml.onnx_serving.patches")


class PatchError(SystemExit):
    """A patch no longer fits what it patches: the message says which and what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "error: the service's patches to other projects' internals don't fit the installed "
            "versions (onnx_serving/_patches): " + "; ".join(problems) + ". Install the pinned "
            "versions (make venv), or update the patch for the new release"
        )


@dataclass(frozen=True)
class Target:
    """A private name a patch relies on: `module.attribute`, with the names its source must
    still use (`uses`: methods, attributes set in `__init__`, private calls)."""

    module: str
    attribute: str = ""
    uses: tuple[str, ...] = ()

    def problem(self) -> str | None:
        where = f"{self.module}.{self.attribute}" if self.attribute else self.module
        try:
            obj = importlib.import_module(self.module)
        except ImportError:
            return f"{self.module} is gone"
        for part in filter(None, self.attribute.split(".")):
            if not hasattr(obj, part):
                return f"{where} is gone"
            obj = getattr(obj, part)
        if self.uses:
            try:
                source = inspect.getsource(obj)
            except (OSError, TypeError):
                return f"{where}: its source can't be read to check {', '.join(self.uses)}"
            missing = [name for name in self.uses if name not in source]
            if missing:
                return f"{where} no longer uses {', '.join(missing)}"
        return None


@dataclass(frozen=True)
class Patch:
    name: str
    why: str  # one line; the module's docstring has the whole story
    upstream: str  # the issue it works around, or the report to file
    versions: dict[str, str]  # distribution -> the version the patch was written for
    targets: tuple[Target, ...]
    apply: Callable[[], None]
    in_effect: Callable[[], bool]
    python: tuple[int, int] | None = field(default=None)

    def problems(self, targets: bool = True) -> list[str]:
        """What no longer fits: versions, the Python version and, with `targets`, every
        private name and use (which imports the patched modules)."""
        found = []
        for dist, want in self.versions.items():
            try:
                have = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                have = "not installed"
            if have != want:
                found.append(f"{self.name} was written for {dist} {want}, found {have}")
        if self.python and sys.version_info[:2] != self.python:
            found.append(f"{self.name} was written for Python {'.'.join(map(str, self.python))}")
        if targets:
            found += [f"{self.name}: {p}" for t in self.targets if (p := t.problem())]
        return found


MODULES = (  # in the order they are applied
    "uvicorn_http",
    "asyncio_accept",
    "uvicorn_drain",
    "bentoml_timeout",
    "bentoml_metrics",
    "bentoml_dispatcher",
    "bentoml_container",
)


def _load() -> tuple[list[Patch], list[str]]:
    """The patches, and the problems of those whose module can't even be imported (what it
    imports from upstream is gone)."""
    loaded, problems = [], []
    for name in MODULES:
        try:
            loaded.append(importlib.import_module(f"{__name__}.{name}").PATCH)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    return loaded, problems


def patches() -> list[Patch]:
    """Every patch, in the order they are applied (PatchError if one can't be imported)."""
    loaded, problems = _load()
    if problems:
        raise PatchError(problems)
    return loaded


def check(targets: bool = True) -> list[Patch]:
    """Every patch, once each fits (PatchError naming every version and target that moved,
    otherwise); nothing is changed. Without `targets`, the versions only: no patched module
    is imported for the check."""
    loaded, problems = _load()
    problems += [p for patch in loaded for p in patch.problems(targets)]
    if problems:
        raise PatchError(problems)
    return loaded


def install(worker: bool = True) -> None:
    """Check every patch, then apply them all (idempotent). Call at import of the service
    module: BentoML's worker imports it before it builds uvicorn's config and its app.

    `worker=False` (`bentoml serve` itself or `bentoml build`, which run no app): the pinned
    versions are checked, which an upgrade can't pass, and nothing is applied; the private
    names are left to the workers, whose full check comes first in each of them. Importing
    BentoML's app modules there, to read their source or to patch them, cost the serve
    process 0.3-0.6 s of every cold start."""
    for patch in check(targets=worker):
        if worker:
            patch.apply()


def verify() -> list[str]:
    """In a running worker: every patch is in effect (RuntimeError otherwise); their names."""
    loaded = patches()
    off = [p.name for p in loaded if not p.in_effect()]
    if off:
        raise RuntimeError(f"patches not in effect in this worker: {', '.join(off)}")
    names = [p.name for p in loaded]
    logger.info("patches in effect: %s", ", ".join(names))
    return names
