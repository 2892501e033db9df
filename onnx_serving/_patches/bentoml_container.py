"""Adaptive batching for `Feeds`: a DataContainer registered for the type.

BentoML batches an API's single argument through the DataContainer registered for its type;
the registry is BentoML's extension point, but a private one
(bentoml._internal.runner.container), so it is fenced here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from bentoml._internal.runner.container import DataContainer, DataContainerRegistry, Payload

from onnx_serving._patches import Patch, Target
from onnx_serving.model.feeds import Feeds


class FeedsContainer(DataContainer[Feeds, Feeds]):
    @classmethod
    def batches_to_batch(cls, batches: Sequence[Feeds], batch_dim: int = 0) -> tuple[Feeds, list]:
        names = batches[0].arrays
        batch = Feeds({k: np.concatenate([b.arrays[k] for b in batches]) for k in names})
        indices = [0, *itertools.accumulate(b.rows for b in batches)]
        return batch, indices

    @classmethod
    def batch_to_batches(cls, batch: Feeds, indices: Sequence[int], batch_dim: int = 0) -> list:
        return [
            Feeds({k: v[a:b] for k, v in batch.arrays.items()})
            for a, b in itertools.pairwise(indices)
        ]

    @classmethod
    def get_batch_size(cls, batch: Feeds, batch_dim: int) -> int:
        return batch.rows

    # Payloads carry batches between processes (runners); this service batches in-process.
    @classmethod
    def to_payload(cls, batch: Feeds, batch_dim: int) -> Payload:
        raise NotImplementedError("Feeds are batched in-process only")

    @classmethod
    def from_payload(cls, payload: Payload) -> Feeds:
        raise NotImplementedError("Feeds are batched in-process only")


def apply() -> None:
    DataContainerRegistry.register_container(Feeds, Feeds, FeedsContainer)


def in_effect() -> bool:
    return DataContainerRegistry.find_by_batch_type(Feeds) is FeedsContainer


PATCH = Patch(
    name="bentoml-feeds-container",
    why="every input of a model (one or many) stacked along rows by adaptive batching",
    upstream="to file at bentoml/BentoML: 'no public way to make a custom type batchable in "
    "the new SDK: @bentoml.api(batchable=True) picks a DataContainer from a private registry; "
    "fix: export DataContainer and register_container under bentoml.batching'",
    versions={"bentoml": "1.4.39"},
    targets=(
        Target("bentoml._internal.runner.container", "DataContainerRegistry.register_container"),
        Target("bentoml._internal.runner.container", "DataContainerRegistry.find_by_batch_type"),
        Target(
            "bentoml._internal.runner.container",
            "DataContainer",
            uses=("def batches_to_batch", "def batch_to_batches", "def get_batch_size"),
        ),
    ),
    apply=apply,
    in_effect=in_effect,
)
