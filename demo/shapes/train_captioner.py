"""Train the shapes captioner's vision side (``python -m pocketvlm.demo.shapes.train_captioner``).

Two stages, seeded and deterministic, on the easy-VQA train split (4,000 images), 2 CPU threads:
0. Vision pretraining: the SigLIP-style tower learns colour and shape with two linear heads (the role a pretrained
   SigLIP plays for SmolVLM; the heads are thrown away).
1. LLaVA stage-1 alignment: the frozen SmolLM2-135M-Instruct decoder is taught to caption ("a blue triangle") and to
   answer the package's questions; only the vision tower and the pixel-shuffle connector learn, through the frozen
   decoder's next-token loss on the answer tokens.

Progress goes to stdout (run it in the background with a log); the vision side is written as safetensors.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketvlm.demo.shapes import captioner
from pocketvlm.demo.shapes.data import COLOURS, SHAPES, Sample, load_split
from pocketvlm.runtime.idefics3 import Idefics3Adapter, TiledImage, preprocess
from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT

# the runtime's default prompt first (the one the evaluation captions with), then paraphrases
CAPTION_PROMPTS = (DEFAULT_CAPTION_PROMPT, "What is in the image?", "Caption this image.", "What do you see?")


class PromptBuilder:
    """Token ids of chat prompts with the image placeholder expanded exactly as the runtime expands it."""

    def __init__(self, tokenizer: Any) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.tokenizer = tokenizer
        self.template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            captioner.CHAT_TEMPLATE)
        config = captioner.runtime_image_config()
        special = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                   "global_image_token": "<global-img>"}
        self.adapter = Idefics3Adapter(config, special)
        self.single = TiledImage(np.zeros((1, 3, captioner.TILE, captioner.TILE), np.float32), 0, 0)
        self.end = tokenizer.convert_tokens_to_ids(captioner.END_OF_TURN)

    def prompt_ids(self, question: str) -> list[int]:
        text = self.template.render(messages=[{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": question}]}],
                                    add_generation_prompt=True)
        return self.tokenizer.encode(self.adapter.expand(text, self.single), add_special_tokens=False)

    def example(self, question: str, answer: str) -> tuple[list[int], int]:
        """(prompt + answer + end-of-turn ids, index where the answer starts)."""
        prompt = self.prompt_ids(question)
        answer_ids = self.tokenizer.encode(answer, add_special_tokens=False) + [self.end]
        return prompt + answer_ids, len(prompt)


def pixel_array(samples: tuple[Sample, ...]) -> torch.Tensor:
    config = captioner.runtime_image_config()
    return torch.from_numpy(np.stack([preprocess(s.image(), config).pixel_values[0] for s in samples]))


class LabelHeads(torch.nn.Module):
    """Colour and shape classifiers on the mean-pooled vision tower output (stage 0, and an auxiliary loss in
    stage 1); thrown away after training."""

    def __init__(self, vision: Any, samples: tuple[Sample, ...], pixels: torch.Tensor) -> None:
        super().__init__()
        width = vision.config.hidden_size
        self.vision, self.pixels = vision, pixels
        self.colour, self.shape = torch.nn.Linear(width, len(COLOURS)), torch.nn.Linear(width, len(SHAPES))
        self.colours = torch.tensor([list(COLOURS).index(s.colour) for s in samples])
        self.shapes = torch.tensor([SHAPES.index(s.shape) for s in samples])

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        pooled = self.vision(pixel_values=self.pixels[idx]).last_hidden_state.mean(1)
        logits_c, logits_s = self.colour(pooled), self.shape(pooled)
        loss = (torch.nn.functional.cross_entropy(logits_c, self.colours[idx])
                + torch.nn.functional.cross_entropy(logits_s, self.shapes[idx]))
        acc = ((logits_c.argmax(-1) == self.colours[idx]) & (logits_s.argmax(-1) == self.shapes[idx])).float().mean()
        return loss, acc.item()


def cosine_schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(steps // 20, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))


def pretrain_vision(heads: LabelHeads, steps: int, per_label: int, rng: np.random.Generator,
                    lr: float = 2e-3) -> None:
    """Stage 0 on label-balanced batches (``per_label`` images of each of the 24 colour/shape labels)."""
    opt = torch.optim.AdamW([*heads.vision.parameters(), *heads.colour.parameters(), *heads.shape.parameters()],
                            lr=lr, weight_decay=0.05)
    sched = cosine_schedule(opt, steps)
    labels = heads.colours * len(SHAPES) + heads.shapes
    by_label = [np.flatnonzero(labels.numpy() == k) for k in range(len(COLOURS) * len(SHAPES))]
    heads.vision.train()
    started = time.time()
    for step in range(1, steps + 1):
        idx = np.concatenate([rng.choice(rows, per_label, replace=len(rows) < per_label) for rows in by_label])
        loss, acc = heads.loss(torch.from_numpy(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            print(f"stage0 step {step}/{steps} loss {loss.item():.4f} batch acc {acc:.3f} "
                  f"{time.time() - started:.0f}s", flush=True)


@torch.no_grad()
def heads_accuracy(heads: LabelHeads, samples: tuple[Sample, ...]) -> float:
    """Colour-and-shape accuracy of the stage-0 heads on ``samples`` (reported for the test split, never used to
    choose anything)."""
    was_training = heads.vision.training
    heads.vision.eval()
    probe = LabelHeads(heads.vision, samples, pixel_array(samples))
    probe.colour, probe.shape = heads.colour, heads.shape
    hits = [probe.loss(torch.arange(i, min(i + 200, len(samples))))[1] * min(200, len(samples) - i)
            for i in range(0, len(samples), 200)]
    heads.vision.train(was_training)
    return sum(hits) / len(samples)


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, start:len(ids)] = torch.tensor(ids[start:])
        mask[row, :len(ids)] = 1
    return input_ids, labels, mask


def align(model: Any, builder: PromptBuilder, pixels: torch.Tensor, samples: tuple[Sample, ...], steps: int,
          batch: int, rng: np.random.Generator, lr: float, vision_lr_scale: float = 0.2,
          aux: LabelHeads | None = None, bf16: bool = False) -> None:
    """Stage 1. With ``aux``, each step also adds the colour/shape classification loss of 64 more images. With
    ``bf16``, forward passes run under CPU bf16 autocast (weights and optimizer state stay fp32)."""
    for p in model.model.text_model.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.model.connector.parameters()), "lr": lr},
              {"params": list(model.model.vision_model.parameters()), "lr": lr * vision_lr_scale}]
    if aux is not None:
        groups.append({"params": [*aux.colour.parameters(), *aux.shape.parameters()], "lr": lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = cosine_schedule(opt, steps)
    pad = builder.tokenizer.pad_token_id
    model.train()
    model.model.text_model.eval()  # no dropout in the frozen decoder
    started, seen = time.time(), []
    for step in range(1, steps + 1):
        idx = rng.choice(len(samples), batch, replace=False)
        examples = []
        for i in idx:
            sample = samples[int(i)]
            if rng.random() < 0.5 or not sample.questions:
                examples.append(builder.example(CAPTION_PROMPTS[rng.integers(len(CAPTION_PROMPTS))], sample.caption))
            else:
                q = sample.questions[int(rng.integers(len(sample.questions)))]
                examples.append(builder.example(q.text, q.answer))
        input_ids, labels, mask = collate(examples, pad)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=input_ids, attention_mask=mask,
                        pixel_values=pixels[torch.from_numpy(idx)][:, None], labels=labels)
            total, aux_acc = out.loss, float("nan")
            if aux is not None:
                aux_loss, aux_acc = aux.loss(torch.from_numpy(rng.choice(len(samples), 64, replace=False)))
                total = total + aux_loss
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        # teacher-forced answer accuracy on this batch: every answer token (and the end of turn) right
        predicted = out.logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        wrong = ((predicted != target) & (target != -100)).any(1)
        seen.append(1.0 - wrong.float().mean().item())
        if step % 10 == 0 or step == steps:
            print(f"stage1 step {step}/{steps} loss {out.loss.item():.4f} answer acc (last 10) "
                  f"{np.mean(seen[-10:]):.3f} aux acc {aux_acc:.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{time.time() - started:.0f}s",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=captioner.WEIGHTS)
    parser.add_argument("--stage0-steps", type=int, default=1500)
    parser.add_argument("--per-label", type=int, default=3, help="stage-0 batch: images per colour/shape label")
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from a vision-side safetensors file instead of the seeded initialisation")
    parser.add_argument("--vision-lr-scale", type=float, default=0.5, help="vision tower lr / connector lr in stage 1")
    parser.add_argument("--aux", action=argparse.BooleanOptionalAction, default=True,
                        help="add the colour/shape classification loss in stage 1")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="stage-1 forward passes under CPU bf16 autocast (about 1.4x faster on AVX512-BF16)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    model, tokenizer = captioner.build_captioner(vision_weights=args.init, seed=args.seed)
    samples = load_split("train")
    pixels = pixel_array(samples)
    builder = PromptBuilder(tokenizer)
    print(f"loaded SmolLM2 + {len(samples)} images in {time.time() - started:.0f}s; example prompt "
          f"{len(builder.example(CAPTION_PROMPTS[0], samples[0].caption)[0])} tokens", flush=True)
    heads = LabelHeads(model.model.vision_model, samples, pixels)
    pretrain_vision(heads, args.stage0_steps, args.per_label, rng)
    test = load_split("test")
    print(f"stage0 heads colour+shape accuracy: test {heads_accuracy(heads, test):.4f}", flush=True)
    align(model, builder, pixels, samples, args.steps, args.batch, rng, args.lr, args.vision_lr_scale,
          heads if args.aux else None, args.bf16)
    print(f"after stage1, heads colour+shape accuracy: test {heads_accuracy(heads, test):.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in captioner.vision_side(model).items()}
    save_file(state, str(args.out), metadata={**{k: str(v) for k, v in vars(args).items() if k != "out"},
                                              "init": args.init.name if args.init else "seeded"})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {time.time() - started:.0f}s",
          flush=True)


if __name__ == "__main__":
    main()
