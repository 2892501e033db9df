"""A TorchScript archive (torch.jit.save), exported with torch.onnx.export.

TorchScript doesn't record its inputs' shapes, so `--input-shape` gives one per input, in the
order `forward` takes them; the first dimension becomes a dynamic batch axis. `--input-dtype`
gives their types (float32 by default; int64 for token ids). Inputs keep the names of
`forward`'s arguments; outputs are `output`, or `output_0, output_1, ...` for several.

Both models are run on a batch of 3 sample inputs (normal floats; integers 0 to 9), a batch
size other than the export's, so that the dynamic axis is checked too. A model that can't run
on another batch size (traced with a fixed one) is exported with the batch size given, and
says so.
"""

from __future__ import annotations

import argparse
import io
import math
import warnings
from typing import Any

import numpy as np

from onnx_serving.model.convert import Conversion, InvalidModel, requires

WHAT = "a TorchScript archive"
SAMPLE_BATCH = 3
# The sample inputs are made in memory: at most this many values over every input at the
# larger of the two batch sizes (128 M values: 512 MB of float32, for a typo like 2240,2240).
MAX_SAMPLE_VALUES = 1 << 27
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool")


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1 or len(dims) > 8:
        raise argparse.ArgumentTypeError(
            f"want positive sizes separated by commas, batch first (1,3,224,224), got {text!r}"
        )
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TorchScript archives")
    group.add_argument(
        "--input-shape",
        action="append",
        type=_shape,
        metavar="N,D1,...",
        help="an input's shape, batch first (1,3,224,224): one per input of forward, in order "
        "(TorchScript doesn't record them)",
    )
    group.add_argument(
        "--input-dtype",
        action="append",
        choices=DTYPES,
        help="an input's type: one for every input, or one per input in order (default: "
        "float32; int64 for token ids)",
    )


def last_line(exc: Exception) -> str:
    """An exception's last line (TorchScript's carry the script's traceback before it)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def load_trusted(data: bytes, name: str) -> Any:
    import torch

    try:
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except Exception as exc:  # TorchScript raises RuntimeError and its own types
        raise InvalidModel(f"{name} could not be loaded as TorchScript: {exc}") from None


def input_names(module: Any) -> list[str]:
    """forward's arguments after self; all must be tensors."""
    arguments = list(module.forward.schema.arguments)[1:]
    others = [f"{a.name}: {a.type}" for a in arguments if str(a.type) != "Tensor"]
    if others:
        raise InvalidModel(
            f"forward takes arguments that are not tensors ({', '.join(others)}): ONNX inputs "
            "are tensors. Wrap the model in a module whose forward takes tensors only"
        )
    return [a.name for a in arguments]


def sample(shapes: list[tuple[int, ...]], dtypes: list[str], batch: int) -> list[Any]:
    """Inputs of the given shapes with the batch dimension set to `batch`: normal floats,
    integers 0 to 9, random booleans; the same for every call with the same arguments."""
    import torch

    rng = np.random.default_rng(0)
    tensors = []
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = (batch, *shape[1:])
        if dtype == "bool":
            values = rng.integers(0, 2, size=size).astype(bool)
        elif dtype.startswith(("int", "uint")):
            values = rng.integers(0, 10, size=size).astype(dtype)
        else:
            values = rng.normal(size=size).astype(dtype)
        tensors.append(torch.from_numpy(values))
    return tensors


def flatten(result: Any) -> list[Any]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise InvalidModel(
        f"forward returns {type(result).__name__}: ONNX outputs are tensors, so it must return "
        "a tensor or a tuple of tensors"
    )


def export(
    module: Any, example: list[Any], inputs: list[str], outputs: list[str], dynamic: bool
) -> bytes:
    import torch

    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic else None
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is the older of torch's two exporters; the
        # newer one (torch.export) can't read TorchScript.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                tuple(example),
                buffer,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types for what it can't export
            raise InvalidModel(f"torch.onnx.export can't export this model: {exc}") from None
    return buffer.getvalue()


def compare(module: Any, onnx_bytes: bytes, feeds: list[Any], inputs: list[str]) -> dict[str, Any]:
    """PyTorch's answers against ONNX Runtime's on `feeds`."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        want = [t.numpy() for t in flatten(module(*feeds))]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(inputs, feeds, strict=True)})
    diffs, scale = [], 0.0
    for w, g in zip(want, got, strict=True):
        if w.shape != g.shape:
            raise InvalidModel(f"the ONNX model answers shape {g.shape}, PyTorch {w.shape}")
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        diffs.append(float(np.max(np.abs(w64 - g64), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(w64), initial=0.0)))
    return {"rows": int(feeds[0].shape[0]), "max_abs_diff": max(diffs), "scale": scale}


def convert(args: argparse.Namespace, parser: argparse.ArgumentParser, data: bytes) -> Conversion:
    requires("convert", "torch")
    import onnx
    import torch

    if not args.input_shape:
        parser.error(
            f"{args.file.name} is TorchScript, which doesn't record its inputs' shapes: give "
            "one --input-shape per input of forward, batch first (--input-shape 1,3,224,224)"
        )
    module = load_trusted(data, args.file.name)
    inputs = input_names(module)
    shapes: list[tuple[int, ...]] = args.input_shape
    if len(shapes) != len(inputs):
        parser.error(
            f"forward takes {len(inputs)} input(s) ({', '.join(inputs)}) and "
            f"{len(shapes)} --input-shape were given: one per input, in order"
        )
    dtypes: list[str] = args.input_dtype or ["float32"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(inputs)
    if len(dtypes) != len(inputs):
        parser.error(f"give one --input-dtype, or one per input ({', '.join(inputs)})")
    batch = SAMPLE_BATCH if shapes[0][0] != SAMPLE_BATCH else SAMPLE_BATCH + 1
    values = sum(max(batch, shape[0]) * math.prod(shape[1:]) for shape in shapes)
    if values > MAX_SAMPLE_VALUES:
        parser.error(
            f"--input-shape asks for {values:,} sample values, more than {MAX_SAMPLE_VALUES:,}: "
            "check the sizes (batch first, then one input's own dimensions)"
        )
    example = sample(shapes, dtypes, shapes[0][0])
    try:
        with torch.no_grad():
            results = flatten(module(*example))
    except InvalidModel:
        raise
    except Exception as exc:  # the model's own code fails on inputs it doesn't take
        raise InvalidModel(
            f"the model fails on inputs of shape {', '.join(map(str, shapes))} and type "
            f"{', '.join(dtypes)}: {last_line(exc)} (check --input-shape and --input-dtype)"
        ) from None
    outputs = ["output"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))]
    onnx_bytes = export(module, example, inputs, outputs, dynamic=True)
    try:
        check = compare(module, onnx_bytes, sample(shapes, dtypes, batch), inputs)
        check["batch"] = "dynamic"
    except Exception:  # traced with a fixed batch size: the model or its export can't vary it
        onnx_bytes = export(module, example, inputs, outputs, dynamic=False)
        try:
            check = compare(module, onnx_bytes, example, inputs)
        except InvalidModel:
            raise
        except Exception as exc:  # ONNX Runtime's own errors on what the exporter wrote
            raise InvalidModel(f"ONNX Runtime can't run the exported model: {exc}") from None
        check["batch"] = f"static {shapes[0][0]}"
    provenance = {
        "framework": "PyTorch",
        "format": "TorchScript",
        "estimator": str(getattr(module, "original_name", type(module).__name__)),
        "converter": {"torch": str(torch.__version__), "onnx": str(onnx.__version__)},
    }
    summary = f"TorchScript {provenance['estimator']}"
    if check["batch"] != "dynamic":
        summary += (
            f" (its batch size fixed at {shapes[0][0]}: it doesn't run on another, as a model "
            "traced with a fixed batch size doesn't; send one batch of that size per call)"
        )
    return Conversion(onnx_bytes, check, provenance, summary)
