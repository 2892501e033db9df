"""Importing your own ONNX file: the options that record what the file itself can't say,
and reading the model's signature from the file with them.

train_and_save.py adds the options to its command line; they become the `ImportOptions`
that `store.save` reads the signature with (`read_signature`), and so end up in the
stored metadata.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onnx_serving.model.signature import (
    DYNAMIC,
    ImageRecipe,
    InvalidModel,
    Signature,
    TensorSpec,
    is_static,
)
from onnx_serving.model.tensors import DTYPES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ai.onnx.ml attributes that carry a classifier's class labels (ZipMap, *Classifier).
CLASS_LABEL_ATTRIBUTES = (
    "classlabels_int64s",
    "classlabels_ints",
    "classlabels_strings",
)


@dataclass(frozen=True)
class ImportOptions:
    """What the user says at import that the file can't: see train_and_save.py --help."""

    features: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    allow_nan: bool = False
    image_size: tuple[int, int] | None = None
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    image_channels: str = "RGB"
    image_scores: str = "logits"
    image_resize: int = 0


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"want numbers separated by commas, got {text!r}"
        ) from None


def _size(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want SIZE or HEIGHT,WIDTH, got {text!r}")
    return values[0], values[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("importing your own model (with --onnx)")
    group.add_argument(
        "--features",
        metavar="A,B,C",
        help="CSV column names for /predict_file, one per input value in a row, in input order "
        "(default: x, or x_0,x_1,... for one input; <input> or <input>_0,... for several)",
    )
    group.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class labels, one per line, in the order of the model's score columns "
        "(classifiers exported by skl2onnx carry their own)",
    )
    group.add_argument(
        "--allow-nan",
        action="store_true",
        help="accept NaN inputs (tree models read NaN as 'missing'); refused by default",
    )
    group.add_argument(
        "--image-size",
        type=_size,
        metavar="H,W",
        help="image models: resize uploads to this (default: the input's static size)",
    )
    group.add_argument(
        "--image-resize",
        type=int,
        default=0,
        metavar="N",
        help="image models: torchvision's recipe, the shorter side resized to N (aspect kept), "
        "then the centre cut to the input's size (Resize(256) + CenterCrop(224) for ImageNet "
        "models: --image-resize 256); default: the picture resized to the input's size",
    )
    group.add_argument(
        "--image-mean",
        type=_floats,
        default=IMAGENET_MEAN,
        metavar="R,G,B",
        help="image models: per-channel mean, after scaling pixels to 0..1 (default: ImageNet's)",
    )
    group.add_argument(
        "--image-std",
        type=_floats,
        default=IMAGENET_STD,
        metavar="R,G,B",
        help="image models: per-channel std (default: ImageNet's)",
    )
    group.add_argument(
        "--image-channels",
        choices=["RGB", "BGR"],
        default="RGB",
        help="image models: channel order the model takes (default: %(default)s)",
    )
    group.add_argument(
        "--image-scores",
        choices=["logits", "probabilities"],
        default="logits",
        help="image models: what the output holds; logits get a softmax (default: %(default)s)",
    )


def options_from(args: argparse.Namespace) -> ImportOptions:
    """ImportOptions from the parsed command line; InvalidModel for an unreadable labels file."""
    labels: tuple[str, ...] = ()
    if args.labels is not None:
        try:
            lines = args.labels.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidModel(f"--labels: {exc.strerror}: {args.labels}") from None
        labels = tuple(line.strip() for line in lines if line.strip())
    features = tuple(f.strip() for f in args.features.split(",")) if args.features else ()
    return ImportOptions(
        features=features,
        labels=labels,
        allow_nan=args.allow_nan,
        image_size=args.image_size,
        image_mean=args.image_mean,
        image_std=args.image_std,
        image_channels=args.image_channels,
        image_scores=args.image_scores,
        image_resize=args.image_resize,
    )


# --- reading a model ------------------------------------------------------------------------


def _dims(shape: list[Any]) -> tuple[int | str, ...]:
    # ONNX Runtime reports symbolic dimensions as strings and unnamed ones as None.
    return tuple(d if isinstance(d, int) else (str(d) if d else DYNAMIC) for d in shape)


def _node_classes(proto: Any) -> tuple[int | str, ...]:
    """Class labels written into the graph by a classifier's converter (ZipMap first)."""
    from onnx import helper

    nodes = sorted(proto.graph.node, key=lambda n: n.op_type != "ZipMap")
    for node in nodes:
        if node.domain != "ai.onnx.ml":
            continue
        for attr in node.attribute:
            if attr.name in CLASS_LABEL_ATTRIBUTES:
                value = helper.get_attribute_value(attr)
                return tuple(v.decode() if isinstance(v, bytes) else int(v) for v in value)
    return ()


def _batch(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> tuple[str, int]:
    """The batch dimension: the first of every input, if they all agree and the outputs
    have it too (an output declared with a different static first dimension is not per row;
    one whose shape the file leaves unknown is taken at its word)."""
    firsts = {s.shape[0] if s.rank else None for s in inputs}
    if None in firsts or len(firsts) != 1:
        return "none", 0
    (first,) = firsts
    for o in outputs:
        if o.is_zipmap or not o.rank:
            continue
        if is_static(o.shape[0]) if not is_static(first) else o.shape[0] != first:
            return "none", 0
    return ("static", int(first)) if is_static(first) else ("dynamic", 0)


def _columns(inputs: tuple[TensorSpec, ...], features: tuple[str, ...]) -> tuple[str, ...]:
    """CSV columns for the inputs: `features` if given, else x / x_0.. for one input and
    name / name_0.. for several. () when an input can't come from CSV columns."""
    widths = []
    for s in inputs:
        if s.rank not in (1, 2) or (s.rank == 2 and s.width is None):
            if features:
                raise InvalidModel(
                    f"--features: input {s.name!r} has shape {list(s.shape)}; only inputs of "
                    "shape [rows] or [rows, n] can be read from CSV columns"
                )
            return ()
        widths.append(1 if s.rank == 1 else s.width)
    if features:
        if len(features) != sum(widths) or len(set(features)) != len(features):
            raise InvalidModel(
                f"--features names {len(features)} distinct column(s), the inputs take "
                f"{sum(widths)} value(s) per row"
            )
        return features
    names: list[str] = []
    for s, width in zip(inputs, widths, strict=True):
        base = "x" if len(inputs) == 1 else s.name
        names += [base] if width == 1 else [f"{base}_{i}" for i in range(width)]
    return tuple(names)


def _image(inputs: tuple[TensorSpec, ...], options: ImportOptions) -> ImageRecipe | None:
    """A recipe for single-input float models of rank 4 with 1 or 3 channels, else None."""
    if len(inputs) != 1 or inputs[0].rank != 4 or inputs[0].dtype.kind != "f":
        return None
    _, d1, d2, d3 = inputs[0].shape
    if d1 in (1, 3):
        layout, channels, h, w = "NCHW", d1, d2, d3
    elif d3 in (1, 3):
        layout, channels, h, w = "NHWC", d3, d1, d2
    else:
        return None
    if options.image_size is not None:
        if is_static(h) and is_static(w) and (h, w) != options.image_size:
            raise InvalidModel(
                f"--image-size {options.image_size[0]},{options.image_size[1]}: input "
                f"{inputs[0].name!r} takes {h}x{w} images only ({list(inputs[0].shape)}); "
                "leave --image-size out"
            )
        h, w = options.image_size
    if not (is_static(h) and is_static(w)):
        raise InvalidModel(
            f"input {inputs[0].name!r} has a dynamic image size {list(inputs[0].shape)}: "
            "give it with --image-size HEIGHT,WIDTH"
        )
    mode = "L" if channels == 1 else options.image_channels
    mean, std = options.image_mean, options.image_std
    if channels == 1:
        mean, std = mean[:1], std[:1]
    if len(mean) != channels or len(std) != channels:
        raise InvalidModel(f"--image-mean and --image-std need {channels} value(s) each")
    if options.image_resize and options.image_resize < max(int(h), int(w)):
        raise InvalidModel(
            f"--image-resize {options.image_resize} is smaller than the {h}x{w} centre it "
            "cuts out: give at least the larger side"
        )
    return ImageRecipe(
        layout,
        mode,
        int(h),
        int(w),
        tuple(mean),
        tuple(std),
        1 / 255,
        options.image_scores,
        options.image_resize,
    )


def _labels(
    labels: tuple[str, ...], own: tuple[int | str, ...], outputs: tuple[TensorSpec, ...]
) -> tuple[int | str, ...]:
    """The class labels: --labels, held to the number of classes the model scores (its own
    classes, else the width of its score output), or the classes the graph carries."""
    if not labels:
        return own
    if own:
        count, where = len(own), f"its own classes {list(own)[:10]}"
    else:
        widths = [o for o in outputs if o.dtype.kind == "f" and o.rank >= 2 and o.width]
        if not widths:
            raise InvalidModel(
                "--labels: the model has no output of class scores with a static width "
                f"(outputs: {[(o.name, list(o.shape)) for o in outputs]})"
            )
        count, where = widths[0].width, f"output {widths[0].name!r} {list(widths[0].shape)}"
    if len(labels) != count:
        raise InvalidModel(
            f"--labels lists {len(labels)} label(s), the model scores {count} classes "
            f"({where}): one label per class, in order"
        )
    return labels


def read_signature(proto: Any, session: Any, options: ImportOptions) -> Signature:
    """The signature of a loaded model (onnx ModelProto and its ONNX Runtime session).

    Raises InvalidModel for inputs or outputs that JSON and V2 can't carry.
    """
    inputs = tuple(TensorSpec(i.name, i.type, _dims(i.shape)) for i in session.get_inputs())
    for s in inputs:
        if s.onnx_type not in DTYPES:
            raise InvalidModel(
                f"input {s.name!r} is {s.onnx_type}: supported are {', '.join(DTYPES)}"
            )
    own = _node_classes(proto)
    outputs = []
    for o in session.get_outputs():
        spec = TensorSpec(o.name, o.type, _dims(o.shape))
        if spec.is_zipmap:
            found = _node_classes(proto)
            if not found:
                raise InvalidModel(f"output {o.name!r} is {o.type}, with no ZipMap class labels")
            spec = replace(spec, shape=(DYNAMIC, len(found)))
        elif spec.onnx_type not in DTYPES:
            raise InvalidModel(
                f"output {o.name!r} is {o.type}: only tensors of {', '.join(DTYPES)} and "
                "ZipMap outputs can be expressed as JSON"
            )
        outputs.append(spec)
    batch, size = _batch(inputs, tuple(outputs))
    classes = _labels(options.labels, own, tuple(outputs))
    zipmap_keys = own if options.labels and any(o.is_zipmap for o in outputs) else ()
    return Signature(
        inputs=inputs,
        outputs=tuple(outputs),
        batch=batch,
        batch_size=size,
        classes=classes,
        zipmap_keys=zipmap_keys,
        columns=_columns(inputs, options.features),
        allow_nan=options.allow_nan,
        image=_image(inputs, options),
        opset=max(
            (op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), default=0
        ),
        ir_version=proto.ir_version,
    )
