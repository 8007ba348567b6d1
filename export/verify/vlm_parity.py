"""VLM parity: a bundle against its checkpoint, per component and per generated token.

For each photo: the vision encoder's output against the HF model's ``get_image_features``; greedy generation
(bundle runtime vs transformers ``generate()``) with token agreement and the first divergence; and a teacher-forced
run over HF's greedy tokens giving the next-token logits cosine at every step (the fair measure for quantized
bundles on random weights, where 4-bit flips greedy tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.checkpoint import read_checkpoint
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.registry import FamilySpec, get_family
from pocketvlm.export.targets.coreml.check import format_risks, load_runner, risk_section
from pocketvlm.export.targets.tflite.delegates import delegate_section, format_coverage
from pocketvlm.export.verify.parity import Comparison
from pocketvlm.export.verify.photos import load_photos
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.vlm import VisionLanguageModel

DEFAULT_PROMPT = "What is in the image?"


def _reference(family: FamilySpec, model: Any, input_ids: np.ndarray, processed: Any,
               steps: int) -> tuple[np.ndarray, list[int], Any]:
    """HF image features, greedy tokens, and the logits for each of those steps."""
    import torch

    ids = torch.from_numpy(input_ids)[None, :]
    extra = family.reference_inputs(model, ids, processed)
    image_args = {k: v for k, v in extra.items() if k in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        features = model.model.get_image_features(**image_args).pooler_output[0].numpy()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, **extra)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    logits = np.stack([step[0].numpy() for step in out.logits])
    return features, tokens, logits


def vlm_parity(bundle_dir: Path | str, model_dir: Path | str, photos: dict[str, Any] | None = None,
               prompt: str = DEFAULT_PROMPT, steps: int = 16) -> dict[str, Any]:
    with quiet_transformers():
        return _vlm_parity(Path(bundle_dir), Path(model_dir), photos, prompt, steps)


def _vlm_parity(bundle_dir: Path, model_dir: Path, photos: dict[str, Any] | None, prompt: str,
                steps: int) -> dict[str, Any]:
    runner = load_runner(bundle_dir)
    if not isinstance(runner, VisionLanguageModel):
        raise BundleError(f"bundle {bundle_dir} is not a VLM bundle", "use a VLM bundle (qwen2_vl, idefics3, ...)")
    if read_checkpoint(model_dir).config_sha256 != runner.bundle.manifest["source"]["config_sha256"]:
        raise BundleError(f"bundle {bundle_dir.name} was exported from a different checkpoint than {model_dir}",
                          "pass the --model directory the bundle was exported from")
    family = get_family(runner.bundle.family)
    model = family.load_model(model_dir)
    photos = photos if photos is not None else load_photos(("coffee", "astronaut", "camera"))
    method = {name: spec.quantization["method"] for name, spec in runner.bundle.components.items()}
    rows = []
    for name, image in photos.items():
        input_ids, processed = runner.prepare(image, prompt)
        ref_features, ref_tokens, ref_logits = _reference(family, model, input_ids, processed, steps)
        greedy = runner.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=steps))
        forced = runner.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=len(ref_tokens)),
                                     forced=ref_tokens)
        got_logits = np.stack(forced.logits)
        cosines = Comparison.of(ref_logits, got_logits)
        per_step = [Comparison.of(ref_logits[i : i + 1], got_logits[i : i + 1]).cosine_min
                    for i in range(len(ref_logits))]
        same = [a == b for a, b in zip(greedy.token_ids, ref_tokens)]
        divergence = next((i for i, ok in enumerate(same) if not ok), None)
        top2 = np.sort(ref_logits, axis=-1)[:, -2:]
        rows.append({
            "photo": name, "image_tokens": int(ref_features.shape[0]), "prompt_tokens": int(len(input_ids)),
            "vision_encoder": {**Comparison.of(ref_features, runner.encode_image(processed)["image_embeds"]).__dict__,
                               "reference_max_abs": float(np.abs(ref_features).max())},
            "logits": {"cosine_min": cosines.cosine_min, "cosine_mean": cosines.cosine_mean,
                       "max_abs": cosines.max_abs, "per_step_cosine": per_step,
                       "per_step_max_abs": [float(np.abs(ref_logits[i] - got_logits[i]).max())
                                            for i in range(len(ref_logits))]},
            "greedy": {"reference": ref_tokens, "bundle": greedy.token_ids,
                       "agreement": float(np.mean(same)) if same else 1.0,
                       "first_divergence": divergence,
                       # the reference's top-1 minus top-2 logit where the tokens first differ: a divergence on a
                       # margin below the bundle's logit error there is a near-tie, not a wrong graph
                       "reference_margin_at_divergence": (None if divergence is None
                                                          else float(top2[divergence, 1] - top2[divergence, 0])),
                       "equal": greedy.token_ids == ref_tokens},
            "teacher_forced_top1_agreement": float(np.mean(got_logits.argmax(-1) == ref_logits.argmax(-1))),
        })
    return {"bundle": str(bundle_dir), "model": str(model_dir), "family": family.name, "quantization": method,
            "prompt": prompt, "steps": steps, "photos": rows, "bundle_bytes": runner.bundle.total_bytes,
            **delegate_section(runner.bundle), **risk_section(runner.bundle)}


def format_vlm_table(report: dict[str, Any]) -> str:
    quant = ", ".join(f"{k} {v}" for k, v in report["quantization"].items())
    lines = [f"parity: {report['bundle']} vs {report['model']} ({report['family']}; {quant})",
             f"{'photo':<12}{'img tok':>8}{'vision cos':>12}{'logit cos min':>15}{'tf top1':>9}{'greedy':>9}"
             f"{'diverges at':>13}"]
    for row in report["photos"]:
        divergence = row["greedy"]["first_divergence"]
        lines.append(f"{row['photo']:<12}{row['image_tokens']:>8}{row['vision_encoder']['cosine_min']:>12.5f}"
                     f"{row['logits']['cosine_min']:>15.5f}{row['teacher_forced_top1_agreement'] * 100:>8.1f}%"
                     f"{row['greedy']['agreement'] * 100:>8.1f}%{'-' if divergence is None else divergence:>13}")
    lines.append(f"bundle size: {report['bundle_bytes'] / 1e6:.2f} MB; {report['steps']} steps per photo")
    if "delegates" in report:
        lines.append(format_coverage(report["delegates"]))
    if "neural_engine" in report:
        lines.append(format_risks(report["neural_engine"]))
    return "\n".join(lines)
