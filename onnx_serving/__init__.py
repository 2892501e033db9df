"""Shared code of the ONNX BentoML service: settings, model store, runner, validation, files."""
