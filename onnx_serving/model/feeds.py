"""What a request hands the runner, and how BentoML's adaptive batching stacks and splits it.

`Feeds` is the model's named input arrays with their row count. BentoML batches an API's
single argument through a DataContainer picked by its type; `FeedsContainer`
(onnx_serving/_patches/bentoml_container.py, registered by install()) stacks every input of a
model (one or many) along rows and gives each request its own rows back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


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
