"""A model saved by its framework, converted to ONNX, checked against the framework and stored:

    python train_and_save.py convert model.pkl --trust --name iris
    python train_and_save.py convert model.pt --trust --name resnet --input-shape 1,3,224,224

Two formats can be converted without the user's code: a scikit-learn model in a pickle or
joblib file (skl2onnx, `scikit_learn.py`) and a TorchScript archive (torch.onnx.export with
a dynamic batch axis, `torchscript.py`). Loading either runs code from the file, so
`convert` only loads files the user vouches for with `--trust` (and the service itself never
loads one). Both models are run on sample inputs, and the conversion is stored only if the
ONNX model's answers match the framework's (`--max-diff`); the measured difference, the
source file's SHA-256 and the converters' versions are stored with it. The import options
of `--onnx` apply.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnx_serving.model import import_options as importing
from onnx_serving.model import store as model_store
from onnx_serving.model.file_kinds import NOT_ONNX, file_kind

InvalidModel = model_store.InvalidModel


@dataclass
class Conversion:
    """What a converter made: the ONNX file, its check against the framework, where it came
    from, and the CSV column names the original model knew (if any)."""

    onnx_bytes: bytes
    check: dict[str, Any]
    provenance: dict[str, Any]
    summary: str
    features: tuple[str, ...] = field(default=())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_and_save.py convert",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n\n")[1:2]),
    )
    parser.add_argument(
        "file",
        type=Path,
        help="a scikit-learn model (pickle or joblib file) or a TorchScript archive "
        "(torch.jit.save)",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="load the file although loading it runs code from it: only for files you made, "
        "or whose maker you trust",
    )
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--version", help="model version (default: from the ONNX file's hash)")
    parser.add_argument(
        "--max-diff",
        type=float,
        default=1e-4,
        help="largest difference allowed between the framework's and the ONNX model's answers "
        "on the sample inputs, relative to the largest answer when that is above 1 "
        "(default: %(default)s)",
    )
    from onnx_serving.model.convert import torchscript

    torchscript.add_arguments(parser)
    importing.add_arguments(parser)
    return parser


def requires(extra: str, *modules: str) -> None:
    """InvalidModel naming the extra to install if any of `modules` is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidModel(
            f"converting this file needs {', '.join(missing)}: pip install -e '.[{extra}]' "
            "(make venv installs them)"
        )


def within(check: dict[str, Any], max_diff: float) -> bool:
    """The conversion answers as the framework does: the largest difference within
    `max_diff`, scaled by the largest answer where that is above 1 (float32 keeps about seven
    digits, so a prediction of 250,000 can't be closer than a few hundredths), and every label
    the same."""
    allowed = max_diff * max(1.0, check.get("scale", 1.0))
    return check["max_abs_diff"] <= allowed and check.get("labels_agree", 1.0) == 1.0


def convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Conversion:
    if not args.file.is_file():
        raise InvalidModel(f"{args.file}: no such file")
    data = args.file.read_bytes()
    kind = file_kind(data)
    if kind is None:
        raise InvalidModel(
            f"{args.file.name} is not a pickle, joblib file or TorchScript archive (ONNX, "
            "perhaps: import it with --onnx)"
        )
    if kind == "torchscript":
        from onnx_serving.model.convert import torchscript as converter
    elif kind in ("pickle", "compressed"):
        from onnx_serving.model.convert import scikit_learn as converter  # type: ignore[no-redef]
    else:
        raise InvalidModel(f"{args.file.name} is {NOT_ONNX[kind]}")
    if not args.trust:
        parser.error(
            f"{args.file.name} is {converter.WHAT}: loading it runs code from it. Convert it "
            "only if you made it or trust who did, with --trust"
        )
    done = converter.convert(args, parser, data)
    done.provenance = {
        "file": args.file.name,
        "sha256": model_store.sha256_bytes(data),
        **done.provenance,
    }
    return done


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model_store.use_project_store()
    try:
        done = convert(args, parser)
        if not within(done.check, args.max_diff):
            raise InvalidModel(
                f"the ONNX conversion answers differently from {done.provenance['framework']} "
                f"on {done.check['rows']} sample rows ({done.check}): not saved "
                f"(--max-diff {args.max_diff:g})"
            )
        options = importing.options_from(args)
        if not options.features and done.features:
            options = replace(options, features=done.features)
        metadata = {"source": "convert", "converted_from": {**done.provenance, "check": done.check}}
        tag, note = model_store.save(
            done.onnx_bytes, args.name, args.version, {"origin": "converted"}, metadata, options
        )
    except InvalidModel as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if note != "saved":
        print(note, file=sys.stderr)
    print(
        f"converted {done.summary}: largest difference from {done.provenance['framework']} on "
        f"{done.check['rows']} rows {done.check['max_abs_diff']:.3g}",
        file=sys.stderr,
    )
    print(tag)
    return 0
