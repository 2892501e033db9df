"""Several model versions side by side: which one answers a request.

    MODEL_TAGS=linear-2x:v1,linear-2x:v2    the served set (each verified by its SHA-256 at
                                            start, each with its own session); the first
                                            is the default
    ROUTING_FILE=routing.yaml               optional: the routing between them (below),
                                            reloaded when the file changes, no restart

    default: v2                 # a version or a full tag
    canary: {version: v3, percent: 10}
    shadow: v4                  # gets a copy of the default's requests, never answers

Per request: an explicit version (`X-Model-Version: v1` on the native API, the V2
`/versions/{v}` path) wins; else the canary takes `percent` of the request keys, sticky: a
key (`X-Request-Key`, or the client's address) hashes to a bucket 0..99.99, and the same key
always lands in the same bucket; else the default. A routing file that names a version
not served, or that does not parse, is refused and the routing in force is kept (logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger("bentoml.onnx_serving.versions.router")


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    percent: float = Field(ge=0, le=100)


class Routing(BaseModel):
    """The routing file: which served version is the default, the canary, the shadow."""

    model_config = ConfigDict(extra="forbid")
    default: str
    canary: Canary | None = None
    shadow: str | None = None


class RoutingError(ValueError):
    """A routing that can't be applied; the message says why."""


@dataclass(frozen=True)
class Route:
    tag: str  # the full tag that answers
    how: str  # "explicit", "canary" or "default": a metric label


def bucket(key: str) -> float:
    """0 <= bucket < 100, the same for the same key in every process and every run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10_000 / 100


class Router:
    def __init__(self, tags: list[str], routing: Routing, file: Path | None = None) -> None:
        self.tags = list(tags)
        self.file = file
        self._mtime = file.stat().st_mtime if file else 0.0
        self.routing = routing
        self.default, self.canary, self.shadow = self._resolve(routing)

    @classmethod
    def from_settings(cls, tags: list[str], file: Path | None) -> Router:
        return cls(tags, load(file) if file else Routing(default=tags[0]), file)

    def tag_of(self, version: str) -> str | None:
        """The served tag for a version ("v2") or a full tag ("name:v2"), else None."""
        for tag in self.tags:
            if version in (tag, tag.split(":", 1)[1]):
                return tag
        return None

    def _resolve(self, routing: Routing) -> tuple[str, tuple[str, float] | None, str | None]:
        def served(version: str, role: str) -> str:
            tag = self.tag_of(version)
            if tag is None:
                raise RoutingError(f"{role} {version!r} is not served; served: {self.tags}")
            return tag

        canary = routing.canary
        return (
            served(routing.default, "default"),
            (served(canary.version, "canary"), canary.percent) if canary else None,
            served(routing.shadow, "shadow") if routing.shadow else None,
        )

    def pick(self, version: str | None, key: str) -> Route:
        """The version that answers a request: explicit, canary by key, or the default.
        An explicit version that isn't served raises RoutingError (a 404)."""
        if version:
            tag = self.tag_of(version)
            if tag is None:
                raise RoutingError(f"model version {version!r} is not served; served: {self.tags}")
            return Route(tag, "explicit")
        if self.canary and bucket(key) < self.canary[1]:
            return Route(self.canary[0], "canary")
        return Route(self.default, "default")

    def apply(self, routing: Routing) -> None:
        self.default, self.canary, self.shadow = self._resolve(routing)
        self.routing = routing
        logger.warning("routing now: %s", routing.model_dump(exclude_none=True))

    async def watch(self, every_s: float = 1.0) -> None:
        """Reload the routing file whenever it changes; keep the routing in force if the new
        file can't be applied. Requests in flight finish on the version they were given.
        Nothing ends this loop: each failure (bad bytes or YAML, an unknown version, no
        permission, a deleted file) is logged once and counted, and the next good file
        applies."""
        assert self.file is not None
        failure: str | None = None
        while True:
            await asyncio.sleep(every_s)
            try:
                if self._reload():
                    failure = None
            except Exception as exc:  # the watcher must outlive any file
                why = str(exc) if isinstance(exc, RoutingError) else f"{type(exc).__name__}: {exc}"
                if why != failure:  # once per failure, not once a second
                    failure = why
                    from onnx_serving import metrics

                    metrics.ROUTING_RELOAD_FAILURES.inc()
                    logger.warning(
                        "routing file %s not applied, keeping the routing in force: %s",
                        self.file,
                        why,
                    )

    def _reload(self) -> bool:
        """Apply the file if it changed since it was last read; True if it was applied."""
        assert self.file is not None
        try:
            mtime = self.file.stat().st_mtime
        except OSError as exc:
            raise RoutingError(f"ROUTING_FILE: {exc.strerror}: {self.file}") from None
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        self.apply(load(self.file))
        return True


def load(file: Path) -> Routing:
    """The routing file (YAML or JSON), validated; RoutingError says what is wrong."""
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
        return Routing.model_validate(data)
    except OSError as exc:
        raise RoutingError(f"ROUTING_FILE: {exc.strerror}: {file}") from None
    except UnicodeDecodeError as exc:
        raise RoutingError(f"ROUTING_FILE {file} is not UTF-8 text: {exc.reason}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise RoutingError(f"ROUTING_FILE {file}: {exc}") from None
