"""What a request hands the runner, and how BentoML's adaptive batching stacks and splits it.

`Feeds` is the model's named input arrays with their row count. BentoML batches an API's
single argument through a DataContainer picked by its type; registering `FeedsContainer`
for `Feeds` is BentoML's own extension point, so every input of a model (one or many) is
stacked along rows and each request gets its own rows back, whatever the model takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from bentoml._internal.runner.container import DataContainer, DataContainerRegistry, Payload


class Feeds:
    """Input name -> array, all with the same number of rows (the first dimension)."""

    __slots__ = ("arrays", "rows")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        first = next(iter(arrays.values()))
        self.rows = len(first) if first.ndim else 1

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.arrays.items()}
        return f"Feeds({shapes})"


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


DataContainerRegistry.register_container(Feeds, Feeds, FeedsContainer)


class BatchPredictions:
    """The outputs of a whole adaptive batch, as BentoML's batching hands them out.

    BentoML calls the API once for the stacked batch and gives each request its share with
    `result[start:stop]`; a slice here is that request's own response.
    """

    def __init__(
        self, outputs: dict[str, np.ndarray], respond: Callable[[dict[str, np.ndarray]], Any]
    ) -> None:
        self.outputs, self.respond = outputs, respond

    def __len__(self) -> int:
        return len(next(iter(self.outputs.values())))

    def __getitem__(self, rows: slice) -> Any:
        return self.respond({k: v[rows] for k, v in self.outputs.items()})


class BatchRefusal:
    """A batch the model could not run: each of its requests gets the same refusal (a fresh
    response each, from `answer`), as BentoML hands out `result[start:stop]`."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer = answer

    def __getitem__(self, rows: slice) -> Any:
        return self.answer()
