"""Files that are not ONNX, told by their first bytes (`file_kind`), and what to do with each
(`NOT_ONNX`): what `--onnx` answers for them, and what `convert` dispatches on."""

from __future__ import annotations

TORCH_EXPORT = (
    "    model = MyModel(); model.load_state_dict(torch.load(FILE)); model.eval()\n"
    "    example = torch.randn(1, N_FEATURES)  # one input as the model takes it\n"
    '    torch.onnx.export(model, (example,), "model.onnx", input_names=["x"],\n'
    '                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})'
)


def file_kind(data: bytes) -> str | None:
    """What a file that is not ONNX is, told by its first bytes: a key of NOT_ONNX; None for
    anything else (ONNX itself included, which has no magic number)."""
    import contextlib
    import io
    import zipfile

    names = None
    if data[:2] == b"PK":
        with contextlib.suppress(zipfile.BadZipFile):
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    if names is not None:
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-checkpoint"
        return "zip"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    # zlib (its second byte says the level), gzip, bzip2, xz: joblib's compressors.
    zlib = data[:1] == b"x" and data[1:2] in (b"\x01", b"^", b"\x9c", b"\xda")
    if zlib or data[:2] == b"\x1f\x8b" or data[:3] == b"BZh" or data[:6] == b"\xfd7zXZ\x00":
        return "compressed"
    return None


SKLEARN_CONVERT = (
    "A scikit-learn model you trust: `python train_and_save.py convert FILE --trust --name "
    "NAME` (skl2onnx, checked against scikit-learn's own answers)"
)
# What each kind of file is, and what to do with it.
NOT_ONNX = {
    "torchscript": (
        "a TorchScript archive (torch.jit.save), not ONNX. One you trust converts in one "
        "command: `python train_and_save.py convert FILE --trust --name NAME --input-shape "
        "1,3,224,224` (one --input-shape per input of forward, batch first; checked against "
        "PyTorch's own answers)"
    ),
    "torch-checkpoint": (
        "a PyTorch checkpoint (torch.save): weights without the model's code, which ONNX "
        "needs. Export it where the model's class is defined, then import the .onnx file:\n"
        + TORCH_EXPORT
    ),
    "zip": "a zip archive, not ONNX: import the .onnx file inside it",
    "pickle": (
        "a Python pickle (what pickle.dump, joblib.dump and older torch.save write), not "
        "ONNX. Loading a pickle runs code from it, so the service never does. "
        + SKLEARN_CONVERT
        + "; other frameworks: export to ONNX where the model was trained (torch.onnx.export "
        "for PyTorch)"
    ),
    "compressed": (
        "compressed (what joblib.dump(..., compress=...) writes), not ONNX: a compressed "
        "pickle. " + SKLEARN_CONVERT
    ),
}
