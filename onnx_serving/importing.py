"""Importing your own ONNX file: the options that record what the file itself can't say.

train_and_save.py adds these to its command line; they become the `ImportOptions` that
`model_store.save` reads the signature with, and so end up in the stored metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .signature import IMAGENET_MEAN, IMAGENET_STD, ImportOptions, InvalidModel


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
    )
