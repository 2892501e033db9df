"""Pictures in: an uploaded PNG or JPEG becomes the model's input tensor by the recipe
recorded at import (size, scaling, mean and std, channel order, layout), and the scores
come back as the top classes with their probabilities. Decoding is Pillow's.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from onnx_serving.model.signature import ImageRecipe
from onnx_serving.model.tensors import InvalidInput

FORMATS = ("PNG", "JPEG")


def to_tensor(data: bytes, recipe: ImageRecipe, max_pixels: int = 50_000_000) -> np.ndarray:
    """PNG or JPEG bytes -> float32 [1, C, H, W] (or [1, H, W, C]) by the recipe. An image of
    more than `max_pixels` (MAX_IMAGE_PIXELS) is refused from its header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    # Pillow's own guard warns at this many pixels and refuses only at twice as many.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in FORMATS:
            raise InvalidInput(f"the image is {img.format}; send PNG or JPEG")
        width, height = img.size
        if width * height > max_pixels:
            raise InvalidInput(
                f"the image has {width}x{height} = {width * height:,} pixels; at most "
                f"MAX_IMAGE_PIXELS={max_pixels:,}",
                status=413,
                reason="size",
            )
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"not a readable PNG or JPEG image: {exc}") from None
    mode = "L" if recipe.channels == "L" else "RGB"
    img = img.convert(mode)
    if recipe.resize:
        # torchvision's Resize(N) then CenterCrop((H, W)): the shorter side to N, then the
        # centre cut out (rounding as torchvision does).
        w, h = img.size
        if w <= h:
            size = (recipe.resize, max(1, int(recipe.resize * h / w)))
        else:
            size = (max(1, int(recipe.resize * w / h)), recipe.resize)
        img = img.resize(size, Image.Resampling.BILINEAR)
        left = round((size[0] - recipe.width) / 2.0)
        top = round((size[1] - recipe.height) / 2.0)
        img = img.crop((left, top, left + recipe.width, top + recipe.height))
    else:
        img = img.resize((recipe.width, recipe.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * np.float32(recipe.scale)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if recipe.channels == "BGR":
        arr = arr[:, :, ::-1]
    arr = (arr - np.array(recipe.mean, np.float32)) / np.array(recipe.std, np.float32)
    if recipe.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr[None], dtype=np.float32)


def top_classes(
    scores: np.ndarray, recipe: ImageRecipe, classes: tuple[Any, ...], k: int
) -> list[dict[str, Any]]:
    """The k best classes of one image's scores, with probabilities (softmax of logits)."""
    scores = scores.reshape(-1).astype(np.float64)
    if recipe.scores == "logits":
        e = np.exp(scores - scores.max())
        probs = e / e.sum()
    else:
        probs = scores
    labels = classes if len(classes) == len(probs) else tuple(range(len(probs)))
    best = np.argsort(-probs, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "probability": float(probs[i])} for i in best]
