"""Write the golden record into a staged bundle: the Python runtime's run of this very bundle, stage by stage.

The record (``runtime/golden.py``, schema ``runtime/schema/golden.schema.json``) is what the web demo and the phone
apps replay in their self-test. It is recorded from the staged files themselves, through the target's own runtime
path (Core ML off macOS: the reference evaluator), so it says what this bundle computes, not what the checkpoint
does; the tolerances are the family's, resolved for this bundle's quantization and target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pocketvlm.export.spec import FamilySpec
from pocketvlm.export.targets.base import Target
from pocketvlm.runtime.bench import engines
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import ExportError, PocketVLMError
from pocketvlm.runtime.golden import GOLDEN_FILE, GOLDEN_IMAGE, GOLDEN_VERSION, GoldenLimits, record
from pocketvlm.runtime.manifest import bundle_from_manifest, sha256_file
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT, VisionLanguageModel

GOLDEN_STEPS = 8
GOLDEN_SIZE = (96, 72)  # width, height: non-square, so every engine's resize path is exercised
GOLDEN_LABELS = ("a cat", "a dog", "a rocket", "a cup of coffee")


def golden_image() -> Image.Image:
    """scikit-image's cat photo (packaged, offline), reduced to a small non-square RGB image."""
    from skimage import data

    return Image.fromarray(np.asarray(data.chelsea())).resize(GOLDEN_SIZE, Image.Resampling.LANCZOS)


def limits(family: FamilySpec, manifest: dict[str, Any]) -> GoldenLimits:
    """The family's golden tolerances for this bundle: encoders by the vision/image component's method, logits by
    the decoder's; a method the tables do not name is held to the int4 (loosest) entries."""
    tol, target, components = family.tolerances, manifest["target"], manifest["components"]

    def method(*names: str) -> str:
        for name in names:
            if name in components:
                return str(components[name]["quantization"].get("method", "fp32"))
        return "fp32"

    def lookup(table: str, chosen: str) -> float:
        value = tol.limit(table, chosen, target)
        return float(value if value is not None else tol.limit(table, "int4", target))  # type: ignore[arg-type]

    image_method = method("vision_encoder", "vision_transformer", "image_encoder", "image_transformer")
    text_method = method("text_decoder", "text_encoder")
    scale = manifest["preprocessing"]["image"]
    pixel = tol.golden_pixel_levels * float(scale["rescale_factor"]) / min(float(s) for s in scale["std"])
    worst = max((image_method, text_method), key=lambda m: lookup("golden_probability_max_abs", m))
    return GoldenLimits(pixel_max_abs=pixel * 1.0001,
                        output_max_abs_relative=max(lookup("golden_output_max_abs_relative", image_method),
                                                    lookup("golden_output_max_abs_relative", text_method)),
                        logit_max_abs_relative=lookup("golden_logit_max_abs_relative", text_method),
                        probability_max_abs=lookup("golden_probability_max_abs", worst))


def write_golden(staging: Path, manifest: dict[str, Any], family: FamilySpec, target: Target) -> None:
    """Record the golden run of the staged bundle, write ``golden.json`` + ``golden.png`` beside it and list both
    in ``manifest`` (``files`` with their sha256, and the ``golden`` entry)."""
    bundle = bundle_from_manifest(staging, manifest)
    image = golden_image()
    if manifest.get("task") == "image_text_to_text":
        model: VisionLanguageModel | DualEncoder = VisionLanguageModel.load(bundle, predictor=target.predictor())
    else:
        model = DualEncoder.load(bundle, predictor=target.predictor())
    engine = "pocketvlm runtime: " + "; ".join(dict.fromkeys(engines(model.sessions).values()))
    try:
        golden = record(model, image, limits(family, manifest), engine, prompt=DEFAULT_CAPTION_PROMPT,
                        labels=list(GOLDEN_LABELS), steps=GOLDEN_STEPS)
    except PocketVLMError:
        raise
    except Exception as exc:  # the target's own runtime refused the artifact: never publish a bundle that cannot run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the exported {manifest['target']} bundle does not run on its own runtime ({first})",
                          "export this component with another --quant or --target, and report the failure") from exc
    image.save(staging / GOLDEN_IMAGE, format="PNG")
    (staging / GOLDEN_FILE).write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
    entries = [entry for entry in manifest["files"] if entry["path"] not in (GOLDEN_FILE, GOLDEN_IMAGE)]
    for name in (GOLDEN_FILE, GOLDEN_IMAGE):
        path = staging / name
        entries.append({"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    manifest["files"] = sorted(entries, key=lambda entry: entry["path"])
    manifest["golden"] = {"file": GOLDEN_FILE, "image": GOLDEN_IMAGE, "golden_version": GOLDEN_VERSION,
                          "stages": [stage["name"] for stage in golden["stages"]]}
