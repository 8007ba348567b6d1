"""The Core ML ``text_decoder``: a stateful mlprogram (iOS 18) whose KV cache lives in Core ML states.

The family's export-friendly decoder (shared with ONNX and LiteRT) reads a KV cache of ``kv_capacity`` slots and
returns the new entries. Here it is wrapped so the cache is two fp16 state tensors, ``key_cache`` and
``value_cache`` [layers, 1, kv_heads, kv_capacity, head_dim], read whole and written back in the graph:

- inputs: the decoder's own (``input_ids``, ``image_embeds``, ``position_ids``, ``attention_mask`` over
  ``kv_capacity + N`` slots, ``deepstack_embeds`` for Qwen3-VL) plus ``cache_position`` [N] int32: the cache slot
  each new token's entries go to, or -1 for a padding token (never written);
- output: ``logits`` [1, vocab] of the last position;
- the write is a comparison of a slot ``arange`` with ``cache_position`` (no data-dependent slicing, no ``one_hot``,
  which do not lower): ``cache = cache * (1 - hit) + hit @ new``.

Two functions share the weights and the states in one multifunction package: ``prefill_N`` (N new tokens) and
``decode`` (one token), the LiteRT target's static signatures. The runtime's ``CoreMLSession`` runs a prompt as
left-padded N-token chunks, then decode steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.families.decoder import kv_shape
from pocketvlm.export.rewrites import grouped_attention
from pocketvlm.export.spec import ComponentDef, TensorDef
from pocketvlm.export.static_shapes import dims, synthetic
from pocketvlm.export.targets.coreml.common import compute_precision, quiet, strip_aliases
from pocketvlm.runtime.errors import ExportError

STATES = ("key_cache", "value_cache")


def stateful_decoder(model: Any, component: ComponentDef, capacity: int, cache_dtype: Any = None) -> Any:
    """The family's decoder with its KV cache moved into buffers of ``cache_dtype`` (default fp16: Core ML states
    after conversion; the ExecuTorch target keeps float32 mutable buffers)."""
    import torch

    cache_dtype = torch.float16 if cache_dtype is None else cache_dtype
    in_defs, out_defs = component.signature(model.config)
    layers, kv_heads, head_dim = kv_shape(getattr(model.config, "text_config", model.config))
    inner = component.wrap(model).eval()
    names = [t.name for t in in_defs if not t.name.startswith("past_")]

    class StatefulDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            shape = (layers, 1, kv_heads, capacity, head_dim)
            self.register_buffer("key_cache", torch.zeros(shape, dtype=cache_dtype))
            self.register_buffer("value_cache", torch.zeros(shape, dtype=cache_dtype))

        def forward(self, **feeds: torch.Tensor) -> torch.Tensor:
            past = []
            for layer in range(layers):
                past += [self.key_cache[layer].float(), self.value_cache[layer].float()]
            logits, *present = self.inner(*[feeds[n] for n in names], *past)
            slots = torch.arange(capacity, dtype=torch.int32)
            hit = (slots[:, None] == feeds["cache_position"][None, :]).to(torch.float32)  # [C, N]
            keep = (1.0 - hit.sum(-1))[:, None]  # [C, 1]
            for cache, new in ((self.key_cache, present[0::2]), (self.value_cache, present[1::2])):
                # per layer [C, N] @ [1, H, N, D] -> [1, H, C, D]: the Neural Engine and Core ML stop at rank 5
                layers_out = [cache[i].float() * keep + torch.matmul(hit, new[i]) for i in range(layers)]
                cache.copy_(torch.stack(layers_out).to(cache_dtype))
            return logits

    del out_defs
    return StatefulDecoder().eval(), names


def decoder_feeds(component: ComponentDef, config: Any, length: int, capacity: int) -> dict[str, Any]:
    """Static example feeds of one function (``length`` new tokens over ``capacity`` cache slots)."""
    import torch

    in_defs, _ = component.signature(config)
    sizes = {"batch": 1, "sequence": length, "image_tokens": length, "past_sequence": capacity + length}
    feeds = {t.name: synthetic(t, dims(t, sizes), i) for i, t in enumerate(in_defs) if not t.name.startswith("past_")}
    feeds["cache_position"] = torch.arange(length, dtype=torch.int32)
    return feeds


BROKEN_PASS = "common::canonicalize_inplace_pattern"


def _pipeline(ct: Any) -> Any:
    """coremltools' default passes less ``canonicalize_inplace_pattern``: it only reorders state writes, and in
    coremltools 9.0 it fails (KeyError on an op it removed) when two states are written from neighbouring ops."""
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes([BROKEN_PASS])
    return pipeline


@contextlib.contextmanager
def without_broken_state_pass() -> Iterator[None]:
    """coremltools' weight compression re-runs the default pipeline with no way to pass one: drop the same pass
    (see ``_pipeline``) from coremltools' default pass lists while inside, and put it back after."""
    from coremltools.converters.mil.mil.passes import pass_pipeline as module

    lists = [module._COMMON_PASSES, module.PassPipeline._PIPELINE_NAME_TO_PASSES["default"]]
    places = [names.index(BROKEN_PASS) if BROKEN_PASS in names else None for names in lists]
    for names, place in zip(lists, places, strict=True):
        if place is not None:
            del names[place]
    try:
        yield
    finally:
        for names, place in zip(lists, places, strict=True):
            if place is not None:
                names.insert(place, BROKEN_PASS)


def _ct_inputs(ct: Any, feeds: dict[str, Any]) -> list[Any]:
    import torch

    return [ct.TensorType(name=k, shape=tuple(v.shape),
                          dtype=np.int32 if v.dtype in (torch.int64, torch.int32) else np.float32)
            for k, v in feeds.items()]


def function_names(prefill_length: int) -> tuple[str, str]:
    return f"prefill_{prefill_length}", "decode"


def convert_decoder(model: Any, component: ComponentDef, directory: Path, prefill_length: int, capacity: int,
                    deployment_target: str = "iOS18") -> dict[str, Path]:
    """One single-function stateful fp16 package per function (``directory / text_decoder.<function>.mlpackage``);
    they are compressed one by one (coremltools compresses single-function packages only) and then merged with
    ``merge_functions``. Returns function name -> package."""
    import torch

    if deployment_target != "iOS18":
        raise ExportError(f"the Core ML text_decoder keeps its KV cache in states, which need iOS 18 (the deployment "
                          f"target is {deployment_target})", "use --deployment-target iOS18")
    import coremltools as ct

    module, _ = stateful_decoder(model, component, capacity)
    cache_shape = tuple(module.key_cache.shape)
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=cache_shape, dtype=np.float16), name=n) for n in STATES]
    parts = {}
    for name, length in zip(function_names(prefill_length), (prefill_length, 1), strict=True):
        feeds = decoder_feeds(component, model.config, length, capacity)
        parts[name] = directory / f"{component.name}.{name}.mlpackage"
        try:
            with quiet(), torch.no_grad(), grouped_attention(model, fp16=True):
                program = torch.export.export(module, (), feeds)
                program = strip_aliases(program.run_decompositions())
                mlmodel = ct.convert(program, inputs=_ct_inputs(ct, feeds), states=states,
                                     outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                                     minimum_deployment_target=ct.target.iOS18,
                                     compute_precision=compute_precision(ct), skip_model_load=True,
                                     pass_pipeline=_pipeline(ct))
                mlmodel.save(str(parts[name]))
                del mlmodel, program
        except Exception as exc:  # torch.export and coremltools raise many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"Core ML conversion of text_decoder ({name}) failed: {first[:300]}",
                              "report the model config; the ONNX target may support it (--target onnx)") from exc
    return parts


def merge_functions(parts: dict[str, Path], out: Path) -> None:
    """One multifunction package from single-function ones; identical weights are stored once."""
    import coremltools as ct

    descriptor = ct.utils.MultiFunctionDescriptor()
    for name, part in parts.items():
        descriptor.add_function(str(part), src_function_name="main", target_function_name=name)
    descriptor.default_function_name = "decode"
    with quiet():
        ct.utils.save_multifunction(descriptor, str(out))


def decoder_static(functions: dict[str, dict[str, Any]], capacity: int, prefill_length: int,
                   image_token_id: int | None) -> dict[str, Any]:
    """The manifest's ``static`` block of a Core ML decoder (read by the runtime's ``CoreMLSession``)."""
    import torch

    first = next(iter(functions.values()))
    return {"signatures": {name: {k: list(v.shape) for k, v in feeds.items()} for name, feeds in functions.items()},
            "dtypes": {k: "int32" if v.dtype in (torch.int64, torch.int32) else "float32" for k, v in first.items()},
            "kv_capacity": capacity, "prefill_length": prefill_length, "image_token_id": image_token_id,
            "states": list(STATES), "kv_cache": "Core ML states key_cache / value_cache "
                                                "[layers, 1, kv_heads, kv_capacity, head_dim], fp16"}


def decoder_inputs(component: ComponentDef, config: Any) -> list[TensorDef]:
    """The package's inputs as the manifest lists them (the decoder's, less past_*, plus cache_position)."""
    in_defs, _ = component.signature(config)
    return [t for t in in_defs if not t.name.startswith("past_")] + [TensorDef("cache_position", "int32",
                                                                              ("sequence",))]
