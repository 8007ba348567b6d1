"""Embeddings and zero-shot classification over a CLIP-style bundle (``image_encoder`` + ``text_encoder``; a split
bundle's ``image_frontend`` + ``image_transformer`` run chained as its ``image_encoder``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketvlm.runtime.backends import Session, open_session, turns
from pocketvlm.runtime.errors import BundleError, InputError
from pocketvlm.runtime.image import DEFAULT_MAX_PIXELS, ImageInput, ImagePreprocess, load_image
from pocketvlm.runtime.manifest import Bundle, load_bundle, reading_fields
from pocketvlm.runtime.text import TextConfig, TextTokenizer

if TYPE_CHECKING:
    from pocketvlm.runtime.coreml import PredictorFactory


@dataclass(frozen=True)
class Scoring:
    """How image-text similarity becomes a probability: CLIP softmax, SigLIP sigmoid with a bias."""

    activation: str  # "softmax" | "sigmoid"
    logit_scale: float
    logit_bias: float
    prompt_template: str


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


SPLIT_STAGES = ("image_frontend", "image_transformer")


class StagedSession:
    """A split image tower's two stages as one ``image_encoder`` session: the frontend's ``vision_hidden`` goes to
    the transformer beside the caller's other feeds, so everything that runs the image tower (embeddings, the golden
    record, benchmarks) runs a split bundle unchanged. ``stages`` holds each stage's own session."""

    owns_kv_cache = False

    def __init__(self, frontend: Session, transformer: Session) -> None:
        self.stages = dict(zip(SPLIT_STAGES, (frontend, transformer), strict=True))
        self.reentrant = all(getattr(stage, "reentrant", False) for stage in self.stages.values())
        self.input_names = frontend.input_names
        self.output_names = transformer.output_names
        backends = dict.fromkeys((frontend.backend, transformer.backend))
        self.backend = (frontend.backend if len(backends) == 1 else
                        f"{frontend.backend} ({SPLIT_STAGES[0]}) + {transformer.backend} ({SPLIT_STAGES[1]})")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frontend, transformer = self.stages.values()
        hidden = frontend.run(feeds)["vision_hidden"]
        return transformer.run({**feeds, "vision_hidden": hidden})

    def reset(self) -> None:
        """Nothing to forget: encoders keep no state."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class DualEncoder:
    """Runs a bundle's image and text towers; all preprocessing lives here, not in the backend."""

    def __init__(self, bundle: Bundle, sessions: dict[str, Session], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        manifest = bundle.manifest
        for key in ("preprocessing", "tokenizer", "zero_shot"):
            if key not in manifest:
                raise BundleError(f"bundle manifest has no '{key}' block: not a dual-encoder bundle",
                                  "use a CLIP or SigLIP bundle for embed/classify")
        self.bundle = bundle
        self.sessions = sessions
        self.turns = turns(sessions.values())  # one request at a time unless every session is reentrant
        self.max_pixels = max_pixels
        with reading_fields(bundle, "dual encoder"):
            self.preprocess = ImagePreprocess.from_json(manifest["preprocessing"]["image"])
            text_config = TextConfig.from_json(manifest["tokenizer"])
            self.tokenizer = TextTokenizer(bundle.file(text_config.file), text_config)
            zs = manifest["zero_shot"]
            self.scoring = Scoring(zs["activation"], float(zs["logit_scale"]), float(zs.get("logit_bias") or 0.0),
                                   zs["prompt_template"])

    @classmethod
    def load(cls, path: Path | str | Bundle, providers: list[str] | None = None, threads: int = 0,
             max_pixels: int = DEFAULT_MAX_PIXELS, predictor: PredictorFactory | None = None) -> DualEncoder:
        """``predictor`` runs Core ML packages (default: Core ML itself on macOS; see ``backends.open_session``).
        A split bundle's stages each get their own session, chained as ``sessions["image_encoder"]``."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        split = SPLIT_STAGES[0] in bundle.components
        opened = {name: open_session(bundle, name, providers, threads, predictor)  # a missing one: BundleError
                  for name in (*(SPLIT_STAGES if split else ("image_encoder",)), "text_encoder")}
        if split:
            opened["image_encoder"] = StagedSession(*(opened.pop(name) for name in SPLIT_STAGES))
        return cls(bundle, opened, max_pixels=max_pixels)

    def pixel_values(self, images: Sequence[ImageInput]) -> np.ndarray:
        return self.preprocess.batch([load_image(image, self.max_pixels) for image in images])

    def image_features(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Unnormalised projected image features, as the model's ``get_image_features``."""
        pixels = self.pixel_values(images)
        with self.turns:
            return self.sessions["image_encoder"].run({"pixel_values": pixels})["image_embeds"]

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        feeds = self.tokenizer.encode(list(texts))
        with self.turns:
            return self.sessions["text_encoder"].run(feeds)["text_embeds"]

    def embed_image(self, images: Sequence[ImageInput]) -> np.ndarray:
        return l2_normalize(self.image_features(images))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(self.text_features(texts))

    def logits(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """[images, texts] logits from normalised embeddings."""
        return image_embeds @ text_embeds.T * self.scoring.logit_scale + self.scoring.logit_bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.scoring.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def prompts(self, labels: Sequence[str], template: str | None = None) -> list[str]:
        template = self.scoring.prompt_template if template is None else template
        if "{}" not in template:
            raise InputError(f"prompt template {template!r} has no '{{}}' placeholder",
                             "use a template like 'a photo of {}.'")
        return [template.replace("{}", label) for label in labels]

    def classify(self, images: Sequence[ImageInput], labels: Sequence[str],
                 template: str | None = None) -> list[list[Prediction]]:
        """Zero-shot classification: per image, labels sorted by score (highest first)."""
        labels = [label.strip() for label in labels]
        if not labels or any(not label for label in labels):
            raise InputError("labels must be non-empty", "pass labels like --labels 'a cat,a dog'")
        if len(set(labels)) != len(labels):
            raise InputError("labels contain duplicates", "pass each label once")
        text = self.embed_text(self.prompts(labels, template))
        probs = self.probabilities(self.logits(self.embed_image(images), text))
        return [[Prediction(labels[i], float(row[i])) for i in np.argsort(-row)] for row in probs]
