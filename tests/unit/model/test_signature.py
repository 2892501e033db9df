"""The signature (model/signature.py) as BentoML stores it."""

from __future__ import annotations

from demo_model import DEMO

from onnx_serving.model.signature import Signature


def test_signature_round_trips_through_bentoml_metadata() -> None:
    # What BentoML's model store accepts as metadata, by its own check.
    from bentoml._internal.utils import validate_metadata  # noqa: TID251

    meta = {"signature": DEMO.to_metadata()}
    validate_metadata(meta)  # BentoML refuses None and other non-basic types
    assert Signature.from_metadata(meta["signature"]) == DEMO
    assert DEMO.columns == ("x",) and DEMO.batch == "dynamic"
