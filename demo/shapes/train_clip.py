"""Train the shapes CLIP from scratch (``python -m pocketvlm.demo.shapes.train_clip``).

A ``CLIPModel`` with a 64 px ViT (patch 8) and a small text tower over the real CLIP BPE vocabulary, trained
contrastively on the easy-VQA train split with captions from the labels ("a photo of a red circle."). A batch holds
several images per label, so the targets are soft: every caption of the same label is a positive. Seeded and
deterministic on 2 CPU threads. The trained model is written as ``weights/shapes_clip.safetensors``;
``shapes_clip.write_checkpoint`` turns it into a save_pretrained() checkpoint directory that ``pocketvlm export``
reads.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketvlm.demo.shapes.data import LABELS, Sample, load_split
from pocketvlm.demo.shapes.shapes_clip import TEMPLATES, WEIGHTS, clip_config, image_processor, save_trained
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.synthetic import clip_bpe_tokenizer


def pixel_array(samples: tuple[Sample, ...], processor: Any) -> torch.Tensor:
    images = [s.image() for s in samples]
    return torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))


def caption_table(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (template, label) caption tokenized once: ids, mask, and the label index of each row."""
    texts = [t.format(label) for label in LABELS for t in TEMPLATES]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    owners = torch.arange(len(LABELS)).repeat_interleave(len(TEMPLATES))
    return enc["input_ids"], enc["attention_mask"], owners


def train(steps: int, per_label: int, seed: int, log_every: int = 50) -> tuple[Any, Any, Any]:
    from transformers import CLIPModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = clip_bpe_tokenizer()
    processor = image_processor()
    with quiet_transformers():
        model = CLIPModel(clip_config(tokenizer))
    samples = load_split("train")
    pixels = pixel_array(samples, processor)
    by_label = [np.array([i for i, s in enumerate(samples) if s.label == label]) for label in LABELS]
    ids, mask, owners = caption_table(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    warmup = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    model.train()
    started = time.time()
    for step in range(1, steps + 1):
        image_idx = np.concatenate([rng.choice(rows, per_label, replace=len(rows) < per_label) for rows in by_label])
        image_labels = torch.arange(len(LABELS)).repeat_interleave(per_label)
        text_idx = torch.from_numpy(np.array([int(rng.integers(len(TEMPLATES))) + int(lab) * len(TEMPLATES)
                                              for lab in image_labels]))
        out = model(input_ids=ids[text_idx], attention_mask=mask[text_idx], pixel_values=pixels[image_idx])
        same = (image_labels[:, None] == owners[text_idx][None, :]).float()
        loss = 0.5 * (torch.nn.functional.cross_entropy(out.logits_per_image, same / same.sum(1, keepdim=True))
                      + torch.nn.functional.cross_entropy(out.logits_per_text, same.T / same.T.sum(1, keepdim=True)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps:
            hit = same[torch.arange(len(image_labels)), out.logits_per_image.argmax(1)].mean()
            print(f"clip step {step}/{steps} loss {loss.item():.4f} batch image->text acc {hit.item():.3f} "
                  f"scale {model.logit_scale.exp().item():.1f} {time.time() - started:.0f}s", flush=True)
    return model.eval(), tokenizer, processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--per-label", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.time()
    model, tokenizer, _ = train(args.steps, args.per_label, args.seed)
    used = torch.unique(caption_table(tokenizer)[0])
    save_trained(model, used, args.out, {"seed": str(args.seed), "steps": str(args.steps),
                                         "per_label": str(args.per_label)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {time.time() - started:.0f}s",
          flush=True)


if __name__ == "__main__":
    main()
