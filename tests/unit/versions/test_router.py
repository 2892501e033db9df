"""The router (versions/router.py): canary buckets, explicit versions, the routing file's
watcher."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from onnx_serving.versions.router import Canary, Router, Routing, RoutingError, bucket


def test_buckets_are_stable_and_spread_evenly() -> None:
    assert bucket("client-7") == bucket("client-7")
    values = [bucket(f"client-{i}") for i in range(20_000)]
    assert all(0 <= v < 100 for v in values)
    below_10 = sum(v < 10 for v in values) / len(values)
    assert 0.09 < below_10 < 0.11, below_10


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
def test_the_canary_gets_its_percent_of_keys_and_always_the_same_ones(percent: float) -> None:
    routing = Routing(default="v1", canary=Canary(version="v2", percent=percent))
    router = Router(["m:v1", "m:v2"], routing)
    keys = [f"user-{i}" for i in range(10_000)]
    picks = [router.pick(None, k) for k in keys]
    share = sum(p.tag == "m:v2" for p in picks) / len(keys) * 100
    assert abs(share - percent) < 1.5, share
    assert all(p.how == ("canary" if p.tag == "m:v2" else "default") for p in picks)
    assert [router.pick(None, k) for k in keys] == picks


def test_an_explicit_version_wins_and_an_unknown_one_is_refused() -> None:
    router = Router(["m:v1", "m:v2"], Routing(default="v1"))
    assert router.pick("v2", "k").how == "explicit" and router.pick("m:v2", "k").tag == "m:v2"
    with pytest.raises(RoutingError, match="'v3' is not served"):
        router.pick("v3", "k")
    with pytest.raises(RoutingError, match="canary 'v9' is not served"):
        Router(["m:v1"], Routing(default="v1", canary=Canary(version="v9", percent=5)))


def test_the_routing_watcher_outlives_any_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "routing.yaml"
    file.write_text("default: v1\n")
    router = Router(["m:v1", "m:v2"], Routing(default="v1"), file)

    async def scenario() -> list[str]:
        watcher = asyncio.create_task(router.watch(every_s=0.05))
        seen = []

        async def step(content: bytes | None, mtime: int) -> None:
            if content is None:
                file.unlink()
            else:
                file.write_bytes(content)
                import os

                os.utime(file, (mtime, mtime))
            await asyncio.sleep(0.3)
            seen.append(router.default)

        await step(b"default: \xff\xfe v2\n", 1)  # not UTF-8: kept
        await step(b"default: [unclosed\n", 2)  # not YAML: kept
        await step(b"default: v9\n", 3)  # not served: kept
        await step(None, 4)  # deleted: kept
        await step(b"default: v2\n", 5)  # good again: applied
        file.chmod(0)
        await step(b"default: v1\n", 6)  # root reads it anyway; applied either way
        assert not watcher.done()
        watcher.cancel()
        return seen

    with caplog.at_level(logging.WARNING, logger="bentoml.onnx_serving.versions.router"):
        seen = asyncio.run(scenario())
    assert seen == ["m:v1", "m:v1", "m:v1", "m:v1", "m:v2", "m:v1"]
    failures = [r for r in caplog.records if "not applied" in r.getMessage()]
    assert len(failures) == 4  # each failure once, not once a poll
    assert "not UTF-8" in failures[0].getMessage()
