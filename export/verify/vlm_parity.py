"""VLM parity: a bundle against its checkpoint, per component and per generated token, with a verdict.

For each photo: the vision side's outputs against the HF model's ``get_image_features`` (Qwen3-VL's deepstack
features too); the bundle's text_decoder fed the HF image features and teacher-forced on HF's greedy tokens (the
decoder alone); then end to end, the bundle's own vision side feeding its decoder: the teacher-forced next-token
logits cosine at every step (the fair measure for quantized bundles on random weights, where 4-bit flips greedy
tokens), teacher-forced top-1 agreement, and greedy generation (bundle runtime vs transformers ``generate()``) with
the first divergence and the reference's top-2 margin there. Each figure is judged against the family's registered
``Tolerances`` for its quantization method (``verdict.py``).

Steps after the reference generates the image placeholder token are not compared: every target's decoder graph
fills image-token positions with image rows, where HF embeds a generated placeholder as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.checkpoint import read_checkpoint
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.npu.check import htp_section
from pocketvlm.export.registry import get_family
from pocketvlm.export.spec import FamilySpec, Tolerances
from pocketvlm.export.targets.coreml.check import load_runner, risk_section
from pocketvlm.export.targets.tflite.delegates import delegate_section
from pocketvlm.export.verify.parity import Comparison, finish_table
from pocketvlm.export.verify.photos import load_photos
from pocketvlm.export.verify.verdict import (
    Check,
    check,
    coarsest,
    component_checks,
    verdict,
    worst_per_line,
)
from pocketvlm.runtime.errors import BundleError
from pocketvlm.runtime.generation import GenerationConfig
from pocketvlm.runtime.vlm import VisionLanguageModel

DEFAULT_PROMPT = "What is in the image?"


def _reference(family: FamilySpec, model: Any, input_ids: np.ndarray, processed: Any,
               steps: int) -> tuple[dict[str, np.ndarray], list[int], np.ndarray]:
    """HF vision outputs (named as the bundle's), greedy tokens, and the logits for each of those steps."""
    import torch

    ids = torch.from_numpy(input_ids)[None, :]
    extra = family.reference_inputs(model, ids, processed)
    image_args = {k: v for k, v in extra.items() if k in ("pixel_values", "image_grid_thw")}
    with torch.no_grad():
        image = model.model.get_image_features(**image_args)
        features = {"image_embeds": image.pooler_output[0].numpy()}
        if getattr(image, "deepstack_features", None) is not None:
            levels = [level[0] if isinstance(level, (tuple, list)) else level for level in image.deepstack_features]
            features["deepstack_embeds"] = torch.stack(levels).numpy()  # [levels, tokens, hidden] of the one image
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, **extra)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    logits = np.stack([step[0].numpy() for step in out.logits])
    return features, tokens, logits


@contextmanager
def _vision_outputs(runner: VisionLanguageModel, outputs: dict[str, np.ndarray]) -> Iterator[None]:
    """The runner's decoder fed ``outputs`` in place of its own vision side (the decoder judged alone); the class's
    ``encode_image`` is back on exit."""
    runner.encode_image = lambda processed: outputs
    try:
        yield
    finally:
        del runner.encode_image


def vlm_parity(bundle_dir: Path | str, model_dir: Path | str, photos: dict[str, Any] | None = None,
               prompt: str = DEFAULT_PROMPT, steps: int = 16) -> dict[str, Any]:
    with quiet_transformers():
        return _vlm_parity(Path(bundle_dir), Path(model_dir), photos, prompt, steps)


def _logits_row(ref_logits: np.ndarray, got_logits: np.ndarray, compared: int) -> dict[str, Any]:
    per_step = [Comparison.of(ref_logits[i : i + 1], got_logits[i : i + 1]).cosine_min for i in range(len(ref_logits))]
    per_step_max_abs = [float(np.abs(ref_logits[i] - got_logits[i]).max()) for i in range(len(ref_logits))]
    judged = Comparison.of(ref_logits[:compared], got_logits[:compared])
    return {"cosine_min": judged.cosine_min, "cosine_mean": judged.cosine_mean, "max_abs": judged.max_abs,
            "worst_step": int(np.argmin(per_step[:compared])), "per_step_cosine": per_step,
            "per_step_max_abs": per_step_max_abs}


def _photo_row(runner: VisionLanguageModel, family: FamilySpec, model: Any, name: str, image: Any, prompt: str,
               steps: int) -> dict[str, Any]:
    input_ids, processed = runner.prepare(image, prompt)
    ref_vision, ref_tokens, ref_logits = _reference(family, model, input_ids, processed, steps)
    image_token = runner.bundle.manifest["special_tokens"].get("image_token_id")
    compared = next((i + 1 for i, t in enumerate(ref_tokens) if t == image_token), len(ref_tokens))
    got_vision = runner.encode_image(processed)
    greedy = runner.generate_ids(input_ids, processed, GenerationConfig(max_new_tokens=steps))
    forced_config = GenerationConfig(max_new_tokens=len(ref_tokens))
    forced = runner.generate_ids(input_ids, processed, forced_config, forced=ref_tokens)
    fed = {k: np.ascontiguousarray(ref_vision[k], dtype=np.float32).reshape(v.shape) for k, v in got_vision.items()}
    with _vision_outputs(runner, fed):
        alone = runner.generate_ids(input_ids, processed, forced_config, forced=ref_tokens)
    got_logits = np.stack(forced.logits)
    same = [a == b for a, b in zip_longest(greedy.token_ids[:compared], ref_tokens[:compared])]
    divergence = next((i for i, ok in enumerate(same) if not ok), None)
    top2 = np.sort(ref_logits, axis=-1)[:, -2:]
    rows_of = lambda x: np.asarray(x).reshape(-1, np.asarray(x).shape[-1])  # noqa: E731  (one row per token)
    vision = {key: {**Comparison.of(rows_of(ref_vision[key]), rows_of(got_vision[key])).__dict__,
                    "reference_max_abs": float(np.abs(ref_vision[key]).max())} for key in ref_vision}
    return {
        "photo": name, "image_tokens": int(ref_vision["image_embeds"].shape[0]), "prompt_tokens": int(len(input_ids)),
        "compared_steps": compared,
        "vision_encoder": vision["image_embeds"],
        **({"deepstack": vision["deepstack_embeds"]} if "deepstack_embeds" in vision else {}),
        "decoder_logits": _logits_row(ref_logits, np.stack(alone.logits), compared),
        "logits": _logits_row(ref_logits, got_logits, compared),
        "greedy": {"reference": ref_tokens, "bundle": greedy.token_ids,
                   "agreement": float(np.mean(same)) if same else 1.0,
                   "first_divergence": divergence,
                   # the reference's top-1 minus top-2 logit where the tokens first differ: a divergence on a margin
                   # below the bundle's logit error there is a near-tie, not a wrong graph
                   "reference_margin_at_divergence": (None if divergence is None
                                                      else float(top2[divergence, 1] - top2[divergence, 0])),
                   "equal": divergence is None},
        "teacher_forced_top1_agreement": float(np.mean(got_logits[:compared].argmax(-1)
                                                       == ref_logits[:compared].argmax(-1))),
    }


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
    target = str(runner.bundle.manifest["target"])
    rows = [_photo_row(runner, family, model, name, image, prompt, steps) for name, image in photos.items()]
    return {"bundle": str(bundle_dir), "model": str(model_dir), "family": family.name, "target": target,
            "quantization": method, "prompt": prompt, "steps": steps, "photos": rows,
            "bundle_bytes": runner.bundle.total_bytes, **delegate_section(runner.bundle), **htp_section(runner.bundle),
            **risk_section(runner.bundle), **verdict(vlm_checks(rows, family.tolerances, method, target))}


def _greedy_checks(row: dict[str, Any], tolerances: Tolerances, method: str, target: str) -> list[Check]:
    greedy, photo = row["greedy"], row["photo"]
    step, factor = greedy["first_divergence"], tolerances.limit("near_tie_factor", method, target)
    if step is None or factor is None:
        where = photo if step is None else f"{photo}, first divergence at step {step}"
        return check("end_to_end", "greedy tokens equal, share of steps", greedy["agreement"], "==", 1.0, method,
                     where)
    error = row["logits"]["per_step_max_abs"][step]
    return (check("end_to_end", "greedy divergence: ref top-2 margin", greedy["reference_margin_at_divergence"], "<=",
                  factor * error, method, f"{photo} step {step}; {factor:g} x logit error {error:.3g}")
            + check("end_to_end", "greedy first divergence step", step, ">=",
                    tolerances.limit("min_divergence_step", method, target), method, photo))


def vlm_checks(rows: list[dict[str, Any]], tolerances: Tolerances, method: dict[str, str],
               target: str) -> list[Check]:
    """The verdict lines of a VLM report's photo rows: each a registered threshold of the component's method (the
    coarsest method of the bundle end to end), on the worst photo."""
    vision = [name for name in method if name != "text_decoder"]
    vision_name, vision_method = "+".join(vision), coarsest(method[n] for n in vision)
    decoder_method, overall = method["text_decoder"], coarsest(method.values())
    logits = lambda m: tolerances.limit("logits_min_cosine", m, target)  # noqa: E731
    checks: list[Check] = []
    for row in rows:
        photo = row["photo"]
        for output in ("vision_encoder", "deepstack"):
            if output in row:
                checks += component_checks(tolerances, vision_name, vision_method, target, row[output],
                                           f"{photo}, {'image_embeds' if output == 'vision_encoder' else output}")
        alone, joint = row["decoder_logits"], row["logits"]
        checks += check("text_decoder", "logits cosine, worst step (HF vision in)", alone["cosine_min"], ">=",
                        logits(decoder_method), decoder_method, f"{photo} step {alone['worst_step']}")
        checks += check("end_to_end", "logits cosine, worst step", joint["cosine_min"], ">=", logits(overall),
                        overall, f"{photo} step {joint['worst_step']}")
        checks += check("end_to_end", "teacher-forced top-1 agreement", row["teacher_forced_top1_agreement"], ">=",
                        tolerances.limit("min_top1_agreement", overall, target), overall,
                        f"{photo}, {row['compared_steps']} steps")
        checks += _greedy_checks(row, tolerances, overall, target)
    return worst_per_line(checks)


def format_vlm_table(report: dict[str, Any]) -> str:
    quant = ", ".join(f"{k} {v}" for k, v in report["quantization"].items())
    lines = [f"parity: {report['bundle']} vs {report['model']} ({report['family']}, {report['target']}; {quant})",
             f"{'photo':<12}{'img tok':>8}{'vision cos':>12}{'logit cos min':>15}{'tf top1':>9}{'greedy':>9}"
             f"{'diverges at':>13}{'compared':>10}"]
    for row in report["photos"]:
        divergence = row["greedy"]["first_divergence"]
        lines.append(f"{row['photo']:<12}{row['image_tokens']:>8}{row['vision_encoder']['cosine_min']:>12.5f}"
                     f"{row['logits']['cosine_min']:>15.5f}{row['teacher_forced_top1_agreement'] * 100:>8.1f}%"
                     f"{row['greedy']['agreement'] * 100:>8.1f}%{'-' if divergence is None else divergence:>13}"
                     f"{row['compared_steps']:>10}")
    cut = [f"{r['photo']} after step {r['compared_steps'] - 1}" for r in report["photos"]
           if r["compared_steps"] < len(r["greedy"]["reference"])]
    if cut:
        lines.append(f"not compared (the reference generated the image placeholder token): {', '.join(cut)}")
    lines.append(f"bundle size: {report['bundle_bytes'] / 1e6:.2f} MB; {report['steps']} steps per photo")
    return finish_table(lines, report)
