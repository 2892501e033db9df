"""What a model is: the store (SHA-256, signatures), import and conversion, the signature, tensors
and their codecs, the ONNX Runtime sessions, optimized variants, batching costs.
"""
