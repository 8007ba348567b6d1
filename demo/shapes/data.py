"""The easy-VQA shapes data (``easy-vqa`` package, MIT): 64x64 images of one coloured shape with question/answer pairs.

The package has no per-image labels, only QA pairs, so each image's colour and shape are derived here:
- colour: the palette colour that covers the most pixels (the generator paints shapes in 8 exact RGB values);
- shape: how much of its bounding box the shape fills, and its 180-degree symmetry.
``load_split`` checks both against every label the QA pairs imply ("what shape is ...", "what is the red shape?",
"is there a circle?" yes/no and the negated forms) and raises on any disagreement.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pocketvlm.runtime.errors import PocketVLMError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "yellow": (255, 255, 0),
}
SHAPES = ("circle", "rectangle", "triangle")
LABELS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NEGATION = re.compile(r"\b(not|no)\b")


class DataMissingError(PocketVLMError):
    """A data package the command needs is not installed."""


class DataError(PocketVLMError):
    """The installed easy-VQA data is not what the shapes models were trained on."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, "reinstall the data package: pip install --force-reinstall easy-vqa==1.0")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str


@dataclass(frozen=True)
class Sample:
    image_id: int
    path: Path
    colour: str
    shape: str
    questions: tuple[Question, ...]

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    def image(self) -> Image.Image:
        with Image.open(self.path) as im:
            return im.convert("RGB")


def _package():  # noqa: ANN202 - the module object
    try:
        import easy_vqa
    except ImportError as exc:
        raise DataMissingError("the easy-vqa data package is not installed",
                               "pip install easy-vqa==1.0 (or pip install -e '.[all]')") from exc
    return easy_vqa


def colour_of(pixels: np.ndarray) -> str:
    """The palette colour covering the most pixels of an RGB uint8 image."""
    flat = pixels.reshape(-1, 3).astype(np.int32)
    counts = {name: int(np.all(flat == rgb, axis=1).sum()) for name, rgb in COLOURS.items()}
    name = max(counts, key=counts.__getitem__)
    if counts[name] == 0:
        raise DataError("an easy-VQA image has no palette colour")
    return name


def shape_of(pixels: np.ndarray, colour: str) -> str:
    """Rectangle if the shape fills its bounding box; otherwise circle or triangle by how well the shape overlaps
    itself turned 180 degrees inside that box (circles ~0.93, triangles ~0.35 on easy-VQA)."""
    mask = np.all(pixels == np.array(COLOURS[colour], dtype=pixels.dtype), axis=-1)
    rows, cols = np.nonzero(mask)
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if box.mean() > 0.95:
        return "rectangle"
    turned = box[::-1, ::-1]
    return "circle" if (box & turned).sum() / (box | turned).sum() > 0.6 else "triangle"


def _qa_labels(texts: list[str], answers: list[str], ids: list[int]) -> tuple[dict[int, set], dict[int, set]]:
    present: dict[int, set] = collections.defaultdict(set)
    absent: dict[int, set] = collections.defaultdict(set)
    for text, answer, image_id in zip(texts, answers, ids, strict=True):
        named = [w for w in re.findall(r"[a-z]+", text) if w in SHAPES or w in COLOURS]
        if answer in SHAPES or answer in COLOURS:
            present[image_id].add(answer)
        elif answer in ("yes", "no"):
            positive = (answer == "yes") != bool(NEGATION.search(text))
            (present if positive else absent)[image_id].update(named)
        else:
            present[image_id].update(named)
    return present, absent


@lru_cache(maxsize=2)
def load_split(split: str) -> tuple[Sample, ...]:
    """All samples of ``train`` (4,000) or ``test`` (1,000), ordered by image id."""
    if split not in ("train", "test"):
        raise DataError(f"unknown easy-VQA split {split!r} (use train or test)")
    pkg = _package()
    texts, answers, ids = getattr(pkg, f"get_{split}_questions")()
    paths = getattr(pkg, f"get_{split}_image_paths")()
    present, absent = _qa_labels(texts, answers, ids)
    by_image: dict[int, list[Question]] = collections.defaultdict(list)
    for text, answer, image_id in zip(texts, answers, ids, strict=True):
        by_image[image_id].append(Question(text, answer))
    samples = []
    for image_id in sorted(paths):
        with Image.open(paths[image_id]) as im:
            pixels = np.asarray(im.convert("RGB"))
        colour = colour_of(pixels)
        shape = shape_of(pixels, colour)
        for derived, names in ((colour, set(COLOURS)), (shape, set(SHAPES))):
            known = (present[image_id] & names) or (names - absent[image_id] if len(names - absent[image_id]) == 1
                                                    else set())
            if known and known != {derived}:
                raise DataError(f"{split} image {image_id}: pixels say {derived}, questions say {sorted(known)}")
        samples.append(Sample(image_id, Path(paths[image_id]), colour, shape, tuple(by_image[image_id])))
    return tuple(samples)
