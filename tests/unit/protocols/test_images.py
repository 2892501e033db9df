"""Images (protocols/images.py): the recipe's resize and crop."""

from __future__ import annotations

import numpy as np


def test_images_can_be_resized_on_the_shorter_side_and_centre_cropped() -> None:
    """torchvision's Resize(N) + CenterCrop: a wide picture, blue | red | green in thirds,
    becomes all red; resized as it is (the default), all three colours remain."""
    import io

    from PIL import Image

    from onnx_serving.model.signature import ImageRecipe
    from onnx_serving.protocols.images import to_tensor

    picture = Image.new("RGB", (300, 100))
    for i, colour in enumerate([(0, 0, 255), (255, 0, 0), (0, 255, 0)]):
        picture.paste(colour, (100 * i, 0, 100 * (i + 1), 100))
    png = io.BytesIO()
    picture.save(png, "PNG")
    base = {"layout": "NHWC", "channels": "RGB", "height": 32, "width": 32}
    plain = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    cropped = to_tensor(png.getvalue(), ImageRecipe(**base, **plain, resize=32))[0]
    assert cropped.shape == (32, 32, 3)
    inside = cropped[:, 2:-2]  # the outer columns blend with the neighbours as they are resized
    assert np.allclose(inside[..., 0], 1.0) and np.allclose(inside[..., 1:], 0.0)
    stretched = to_tensor(png.getvalue(), ImageRecipe(**base, **plain))[0]
    assert stretched[16, 2, 2] > 0.9 and stretched[16, 16, 0] > 0.9 and stretched[16, 29, 1] > 0.9
