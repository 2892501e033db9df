"""BentoML's dispatcher as patched (_patches/bentoml_dispatcher.py), driving a stub model."""

from __future__ import annotations

import asyncio
from typing import Any

from onnx_serving._patches.bentoml_dispatcher import GreedyDispatcher


class StubModel:
    """A model the test controls: each batch waits until released, and answers each
    request with its own input doubled."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, inputs: tuple[int, ...]) -> list[int]:
        self.batches.append(list(inputs))
        await self.release.wait()
        return [2 * x for x in inputs]


def dispatch(max_batch_size: int) -> tuple[Any, StubModel]:
    model = StubModel()
    dispatcher = GreedyDispatcher(
        10_000, max_batch_size, fallback=lambda: None, get_batch_size=lambda x: 1
    )
    return dispatcher(model), model


def test_a_lone_request_goes_at_once_and_the_queue_goes_in_one_batch_when_the_model_is_free() -> (
    None
):
    async def go() -> tuple[list[int], list[list[int]]]:
        call, model = dispatch(max_batch_size=3)
        first = asyncio.ensure_future(call(1))
        await asyncio.sleep(0.05)
        assert model.batches == [[1]]  # not held back for more: the model was free
        rest = [asyncio.ensure_future(call(x)) for x in (2, 3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        assert model.batches == [[1]]  # the model is busy: the others queue
        model.release.set()
        answers = await asyncio.gather(first, *rest)
        return answers, model.batches

    answers, batches = asyncio.run(go())
    assert answers == [2, 4, 6, 8, 10, 12]  # each caller gets its own answer
    assert batches == [[1], [2, 3, 4], [5, 6]]  # up to max_batch_size, in arrival order
