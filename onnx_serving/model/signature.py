"""What a model takes and gives: named tensors, their types and shapes, the batch dimension,
class labels, CSV columns and the image recipe.

Read once from the ONNX file when it is imported (import_options.read_signature), kept in the
model's BentoML metadata as plain JSON types (`to_metadata`: BentoML refuses None, so an
unnamed dynamic dimension is written "?"), and rebuilt from there when the service starts
(`from_metadata`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_serving.model.tensors import DTYPES

FORMAT = 2  # metadata written before this module had no "format" key: re-read from the file
DYNAMIC = "?"


class InvalidModel(ValueError):
    """An ONNX file that this service can't serve; the message says why."""


def is_static(dim: int | str) -> bool:
    return isinstance(dim, int) and dim >= 0


@dataclass(frozen=True)
class TensorSpec:
    name: str
    onnx_type: str  # "tensor(float)"; a ZipMap output: "seq(map(int64,tensor(float)))"
    shape: tuple[int | str, ...]  # int: static; str: dynamic (its symbolic name, or "?")

    @property
    def is_zipmap(self) -> bool:
        """skl2onnx's per-row {class: probability} maps, served as a [rows, classes] tensor."""
        return self.onnx_type.startswith("seq(map(")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.is_zipmap else DTYPES[self.onnx_type][0]

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol's name for the type: FP32, INT64, BYTES, ..."""
        return "FP32" if self.is_zipmap else DTYPES[self.onnx_type][1]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def width(self) -> int | None:
        """Values per row (the product of the dimensions after the first), None if dynamic."""
        rest = self.shape[1:]
        return math.prod(rest) if all(is_static(d) for d in rest) else None

    @property
    def is_column(self) -> bool:
        """[rows, 1]: one value per row, which the native JSON API sends as a flat list."""
        return self.rank == 2 and self.shape[1] == 1

    def v2_shape(self) -> list[int]:
        return [d if is_static(d) else -1 for d in self.shape]

    def to_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.onnx_type, "shape": list(self.shape)}

    @classmethod
    def from_metadata(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class ImageRecipe:
    """How an uploaded picture becomes the model's input tensor, recorded at import."""

    layout: str  # "NCHW" or "NHWC"
    channels: str  # "RGB", "BGR" or "L"
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255  # pixel values 0..255 times this, before mean and std
    scores: str = "logits"  # "logits": softmax them; "probabilities": as they are
    # 0: the picture is resized to height x width as it is. N: torchvision's recipe, the
    # shorter side resized to N (aspect kept), then the centre height x width cut out.
    resize: int = 0

    def to_metadata(self) -> dict[str, Any]:
        out = {**self.__dict__, "mean": list(self.mean), "std": list(self.std)}
        if not self.resize:
            out.pop("resize")  # as recorded before the option existed: the same signature
        return out

    @classmethod
    def from_metadata(cls, d: dict[str, Any]) -> ImageRecipe:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # "dynamic": any number of rows per call; "static": exactly batch_size rows per call
    # (the service runs larger requests in slices); "none": no batch dimension at all.
    batch: str = "dynamic"
    batch_size: int = 0
    classes: tuple[int | str, ...] = ()  # labels of the class-score columns, if known
    columns: tuple[str, ...] = ()  # CSV columns feeding the inputs, in order; () if none fit
    allow_nan: bool = False  # NaN is a valid input (tree models read it as "missing")
    image: ImageRecipe | None = None
    opset: int = 0
    ir_version: int = 0
    # A ZipMap output's own keys (the classifier's classes) where --labels renamed them.
    zipmap_keys: tuple[int | str, ...] = ()

    @property
    def single_input(self) -> bool:
        return len(self.inputs) == 1

    @property
    def single_output(self) -> bool:
        return len(self.outputs) == 1

    @property
    def batchable(self) -> bool:
        """Can requests be stacked along rows into one call? Only with a dynamic first dim."""
        return self.batch == "dynamic"

    def batching_note(self) -> str:
        if self.batch == "dynamic":
            return "the first dimension is dynamic: requests can be batched"
        if self.batch == "static":
            return (
                f"the model takes exactly {self.batch_size} row(s) per call: larger requests "
                "run in slices of that size, and adaptive batching can't combine requests"
            )
        return "the inputs have no common batch dimension: each request runs as sent"

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output_columns(self, spec: TensorSpec) -> list[str]:
        """CSV column names for one output: named after it, one per value in a row."""
        base = "y" if self.single_output else spec.name
        width = spec.width if spec.rank > 1 else 1
        if width == 1:
            return [base]
        if width is None:
            raise ValueError(f"output {spec.name!r} has a dynamic width: it can't be CSV columns")
        if self.classes and width == len(self.classes):
            return [f"{base}_{c}" for c in self.classes]
        return [f"{base}_{i}" for i in range(width)]

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "inputs": [s.to_metadata() for s in self.inputs],
            "outputs": [s.to_metadata() for s in self.outputs],
            "batch": self.batch,
            "batch_size": self.batch_size,
            "batching": self.batching_note(),
            "classes": list(self.classes),
            "columns": list(self.columns),
            "allow_nan": self.allow_nan,
            "opset": self.opset,
            "ir_version": self.ir_version,
        }
        if self.image is not None:
            out["image"] = self.image.to_metadata()
        if self.zipmap_keys:
            out["zipmap_keys"] = list(self.zipmap_keys)
        return out

    @classmethod
    def from_metadata(cls, d: dict[str, Any]) -> Signature:
        image = d.get("image")
        return cls(
            inputs=tuple(TensorSpec.from_metadata(s) for s in d["inputs"]),
            outputs=tuple(TensorSpec.from_metadata(s) for s in d["outputs"]),
            batch=d["batch"],
            batch_size=d["batch_size"],
            classes=tuple(d["classes"]),
            columns=tuple(d["columns"]),
            allow_nan=d["allow_nan"],
            image=ImageRecipe.from_metadata(image) if image else None,
            opset=d["opset"],
            ir_version=d["ir_version"],
            zipmap_keys=tuple(d.get("zipmap_keys", ())),
        )


def example_feeds(sig: Signature) -> dict[str, np.ndarray]:
    """One row of zeros (empty strings) per input, the smallest call the model must take:
    the warm-up at start and the trial run at import."""
    rows = sig.batch_size if sig.batch == "static" else 1
    feeds = {}
    for s in sig.inputs:
        shape = [d if is_static(d) else 1 for d in s.shape]
        if s.rank and sig.batch != "none":
            shape[0] = rows
        feeds[s.name] = (
            np.full(shape, "", dtype=object) if s.dtype.kind == "O" else np.zeros(shape, s.dtype)
        )
    return feeds
