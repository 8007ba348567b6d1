"""Parity: how far a bundle is from the original model, per component, on real photos.

The reference is the Hugging Face model driven the way a transformers user would drive it (its own image processor,
tokenizer and ``get_*_features``). Each component is compared on identical inputs (so preprocessing error does not
hide in it), preprocessing and tokenization are compared separately, and the end-to-end zero-shot top-1 is compared
on the photos with the runtime doing everything. Every figure with a registered threshold (the family's
``Tolerances``) is a PASS/FAIL line of the report (``verdict.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.checkpoint import read_checkpoint
from pocketvlm.export.families.loading import image_processor
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.npu.check import format_htp, htp_section
from pocketvlm.export.registry import get_family
from pocketvlm.export.targets.coreml.check import format_risks, load_runner, risk_section
from pocketvlm.export.targets.tflite.delegates import delegate_section, format_coverage
from pocketvlm.export.verify.photos import PHOTO_LABELS, load_photos
from pocketvlm.export.verify.verdict import Check, check, coarsest, component_checks, format_checks, verdict
from pocketvlm.runtime.dual_encoder import DualEncoder
from pocketvlm.runtime.errors import BundleError


@dataclass(frozen=True)
class Comparison:
    max_abs: float
    mean_abs: float
    cosine_min: float
    cosine_mean: float

    @classmethod
    def of(cls, reference: np.ndarray, candidate: np.ndarray) -> Comparison:
        ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
        got = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
        diff = np.abs(ref - got)
        cos = (ref * got).sum(-1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-30)
        return cls(float(diff.max()), float(diff.mean()), float(cos.min()), float(cos.mean()))


def _features(output: Any) -> np.ndarray:
    tensor = output if hasattr(output, "detach") else output.pooler_output
    return tensor.detach().float().numpy()


def _hf_text_inputs(model_dir: Path, prompts: list[str], manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    text = manifest["tokenizer"]
    padding = "max_length" if text["padding"] == "max_length" else True
    enc = tok(prompts, padding=padding, max_length=text["max_length"], truncation=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def load_dual_encoder(bundle_dir: Path) -> DualEncoder:
    """The runtime's dual encoder; a Core ML bundle off macOS runs on the reference evaluator."""
    runner = load_runner(bundle_dir)
    if not isinstance(runner, DualEncoder):
        raise BundleError(f"bundle {bundle_dir} is not a dual-encoder bundle", "use a CLIP or SigLIP bundle")
    return runner


def dual_encoder_parity(bundle_dir: Path | str, model_dir: Path | str, labels: list[str] | None = None,
                        photos: dict[str, Any] | None = None) -> dict[str, Any]:
    with quiet_transformers():
        return _dual_encoder_parity(bundle_dir, model_dir, labels, photos)


def _dual_encoder_parity(bundle_dir: Path | str, model_dir: Path | str, labels: list[str] | None,
                         photos: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    bundle_dir, model_dir = Path(bundle_dir), Path(model_dir)
    runner = load_dual_encoder(bundle_dir)
    family = get_family(runner.bundle.family)
    if family.task != "zero_shot_image_classification":
        raise BundleError(f"bundle family {family.name} is not a dual encoder", "use a CLIP or SigLIP bundle")
    checkpoint = read_checkpoint(model_dir)
    if checkpoint.config_sha256 != runner.bundle.manifest["source"]["config_sha256"]:
        raise BundleError(f"bundle {bundle_dir.name} was exported from a different checkpoint than {model_dir}",
                          "pass the --model directory the bundle was exported from")
    model = family.load_model(model_dir)
    photos = photos if photos is not None else load_photos()
    labels = labels or list(dict.fromkeys(PHOTO_LABELS.values()))
    images = list(photos.values())
    prompts = runner.prompts(labels)

    processor = image_processor(model_dir, lambda: family.default_processor(model.config))
    hf_pixels = np.asarray(processor(images, return_tensors="np")["pixel_values"])
    our_pixels = runner.pixel_values(images)
    # Feed the reference what the exported tower takes: SigLIP is run without an attention mask, as it was trained.
    text_inputs = {t.name for t in runner.bundle.component("text_encoder").inputs}
    hf_text = {k: v for k, v in _hf_text_inputs(model_dir, prompts, runner.bundle.manifest).items() if k in text_inputs}
    our_text = runner.tokenizer.encode(prompts)
    with torch.no_grad():
        ref_image = _features(model.get_image_features(pixel_values=torch.from_numpy(hf_pixels)))
        ref_text = _features(model.get_text_features(**{k: torch.from_numpy(v) for k, v in hf_text.items()}))
    got_image = runner.sessions["image_encoder"].run({"pixel_values": hf_pixels})["image_embeds"]
    got_text = runner.sessions["text_encoder"].run(hf_text)["text_embeds"]

    def top1(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        return runner.logits(norm(image_embeds), norm(text_embeds)).argmax(-1)

    ref_top1 = top1(ref_image, ref_text)
    end_to_end = top1(runner.image_features(images), runner.text_features(prompts))
    method = {name: spec.quantization["method"] for name, spec in runner.bundle.components.items()}
    if "image_transformer" in method:  # a split image side is judged as one image_encoder, at its transformer's method
        method["image_encoder"] = method["image_transformer"]
    target = str(runner.bundle.manifest["target"])
    tolerances = family.tolerances
    rows: dict[str, dict[str, Any]] = {}
    checks: list[Check] = []
    for name, (ref, got) in {"image_encoder": (ref_image, got_image), "text_encoder": (ref_text, got_text)}.items():
        row = {**Comparison.of(ref, got).__dict__, "reference_max_abs": float(np.abs(ref).max()),
               "quantization": method[name]}
        lines = component_checks(tolerances, name, method[name], target, row)
        rows[name] = {**row, "pass": all(c.passed for c in lines)}
        checks += lines
    ids_equal = our_text["input_ids"].shape == hf_text["input_ids"].shape and bool(
        (our_text["input_ids"] == hf_text["input_ids"]).all())
    preprocessing = {"pixel_values_max_abs": float(np.abs(our_pixels - hf_pixels).max()), "input_ids_equal": ids_equal}
    checks += check("preprocessing", "pixel_values max abs (runtime vs HF)", preprocessing["pixel_values_max_abs"],
                    "<=", tolerances.pixel_max_abs)
    checks += check("preprocessing", "input_ids equal (runtime vs HF)", float(ids_equal), "==", 1.0)
    agreement = float((ref_top1 == end_to_end).mean())
    overall = coarsest(method.values())
    checks += check("end_to_end", "zero-shot top-1 agreement", agreement, ">=",
                    tolerances.limit("min_top1_agreement", overall, target), overall,
                    f"{len(images)} photos x {len(labels)} labels")
    return {
        "bundle": str(bundle_dir),
        "model": str(model_dir),
        "family": family.name,
        "target": target,
        "photos": list(photos),
        "labels": labels,
        "components": rows,
        "preprocessing": preprocessing,
        "zero_shot": {"top1_agreement": agreement, "reference_top1": [labels[i] for i in ref_top1],
                      "bundle_top1": [labels[i] for i in end_to_end]},
        "bundle_bytes": runner.bundle.total_bytes,
        **delegate_section(runner.bundle), **htp_section(runner.bundle),
        **risk_section(runner.bundle),
        **verdict(checks),
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"parity: {report['bundle']} vs {report['model']} ({report['family']}, {report['target']}, "
             f"{len(report['photos'])} photos)",
             f"{'component':<16}{'quant':<9}{'max abs':>11}{'mean abs':>11}{'cos min':>10}{'cos mean':>10}"]
    for name, row in report["components"].items():
        lines.append(f"{name:<16}{row['quantization']:<9}{row['max_abs']:>11.3e}{row['mean_abs']:>11.3e}"
                     f"{row['cosine_min']:>10.5f}{row['cosine_mean']:>10.5f}")
    lines.append(f"zero-shot top-1 agreement: {report['zero_shot']['top1_agreement'] * 100:.1f}% "
                 f"over {len(report['photos'])} photos x {len(report['labels'])} labels")
    lines.append(f"bundle size: {report['bundle_bytes'] / 1e6:.2f} MB")
    return finish_table(lines, report)


def finish_table(lines: list[str], report: dict[str, Any]) -> str:
    """A parity table's target sections (delegate coverage, Neural Engine risks) and verdict lines after ``lines``."""
    if "delegates" in report:
        lines.append(format_coverage(report["delegates"]))
    if "neural_engine" in report:
        lines.append(format_risks(report["neural_engine"]))
    if "htp" in report:
        lines.append(format_htp(report["htp"]))
    return "\n".join(lines + format_checks(report))
