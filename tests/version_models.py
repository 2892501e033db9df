"""Two versions of the demo model in a store of their own, for the versions and monitoring
tests: the demo (y = 2x) and linear-2x:v3 (y = 3x), which take and give the same tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BentoServer, run_train, running
from onnx import TensorProto, helper, save

TRIPLE = "linear-2x:v3"


def triple_model(path: Path, names: tuple[str, str] = ("x", "y")) -> None:
    """y = 3x; with the demo's input and output names it is another version of the demo."""
    graph = helper.make_graph(
        [helper.make_node("Mul", [names[0], "k"], [names[1]])],
        "triple",
        [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["rows", 1])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, ["rows", 1])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [3.0])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store of its own with the demo (2x) and a second version, linear-2x:v3 (3x)."""
    home = tmp_path_factory.mktemp("versions_home")
    demo = run_train(home)
    assert demo.returncode == 0, demo.stderr
    triple_model(home / "triple.onnx")
    imported = run_train(
        home, "--onnx", str(home / "triple.onnx"), "--name", "linear-2x", "--version", "v3"
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    return home, demo.stdout.strip()


@contextlib.contextmanager
def serving(
    home: Path, tmp: Path, tags: list[str], routing: str, workers: int = 1, **extra: str
) -> Iterator[tuple[BentoServer, Path]]:
    """`tags` served side by side with `routing` as the routing file (which the test may
    rewrite), stopped on the way out."""
    file = tmp / "routing.yaml"
    file.write_text(routing)
    env = {"MODEL_TAGS": ",".join(tags), "ROUTING_FILE": str(file), "WORKERS": str(workers)}
    env |= extra
    with running(home, tmp / "serve.log", **env) as server:
        yield server, file
