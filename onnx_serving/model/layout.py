"""How a stored model keeps its file: one ONNX file in the BentoML model's folder, named so
by the store (store.py) and opened by the runner (runner.py)."""

ONNX_FILENAME = "model.onnx"
