"""Real photos for parity and the demo: the scikit-image sample images that ship inside the package (offline).

They cover square and non-square shapes, RGB, grayscale and RGBA, so preprocessing parity is tested on the cases
that break hand-written resizers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "hubble_deep_field",
          "immunohistochemistry", "page", "text", "logo", "colorwheel", "clock", "cell", "retina")

# What each photo shows, for zero-shot label sets (the first label is the caption a person would give).
PHOTO_LABELS = {
    "astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket",
    "camera": "a man with a camera", "coins": "coins", "moon": "the moon", "hubble_deep_field": "galaxies",
    "immunohistochemistry": "stained cells under a microscope", "page": "a page of text", "text": "text",
    "logo": "a logo", "colorwheel": "a colour wheel", "clock": "a clock", "cell": "a cell", "retina": "a retina",
}


def load_photos(names: tuple[str, ...] = PHOTOS) -> dict[str, Image.Image]:
    from skimage import data

    photos = {}
    for name in names:
        array = np.asarray(getattr(data, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        photos[name] = Image.fromarray(array)  # mode L, RGB or RGBA as shipped
    return photos
