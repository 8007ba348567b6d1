"""The family registry: export specs are data, one module per family, one registry line each.

A family declares its named components (wrapper, example inputs, tensor specs with symbolic dims), how to load a
checkpoint, a seeded tiny config for tests, the bundle metadata the runtime needs, and its parity tolerances.
Nothing else in the exporter branches on architecture names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketvlm.runtime.errors import UnsupportedModelError

if TYPE_CHECKING:
    import torch

COMPONENT_NAMES = frozenset({"image_encoder", "text_encoder", "vision_encoder", "vision_frontend",
                             "vision_transformer", "token_embedding", "text_decoder"})
TASKS = frozenset({"zero_shot_image_classification", "image_text_to_text"})


@dataclass(frozen=True)
class TensorDef:
    """A graph input or output: shape entries are ints or symbolic dim names shared across tensors."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ComponentDef:
    name: str
    wrap: Callable[[Any], torch.nn.Module]  # full HF model -> export-friendly module for this component
    signature: Callable[[Any], tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]]  # config -> (inputs, outputs)
    example_inputs: Callable[[Any], dict[str, torch.Tensor]]  # config -> named example tensors
    dim_bounds: Callable[[Any], dict[str, tuple[int, int] | None]] = lambda config: {}

    def __post_init__(self) -> None:
        if self.name not in COMPONENT_NAMES:
            raise ValueError(f"component name {self.name!r} is not in the shared vocabulary {sorted(COMPONENT_NAMES)}")


@dataclass(frozen=True)
class Tolerances:
    """Parity thresholds per quantization (and optionally per component): fp32 by max abs error, all by cosine."""

    fp32_max_abs: float = 1e-4
    min_cosine: dict[str, float] = field(default_factory=lambda: {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99,
                                                                  "int4": 0.98})
    component_min_cosine: dict[str, dict[str, float]] = field(default_factory=dict)

    def cosine_for(self, component: str, method: str) -> float:
        if method == "palette4":  # 4-bit look-up tables are held to the 4-bit linear thresholds
            method = "int4"
        return self.component_min_cosine.get(component, {}).get(method, self.min_cosine[method])


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model_types: tuple[str, ...]
    task: str
    components: tuple[ComponentDef, ...]
    load_model: Callable[[Path], Any]  # checkpoint dir -> eval-mode HF model (fp32)
    tiny_config: Callable[..., Any]  # seeded tiny config for tests (kwargs override sizes)
    from_config: Callable[[Any], Any]  # config -> randomly initialised model
    bundle_metadata: Callable[[Any, Path, Path], dict[str, Any]]  # (model, checkpoint dir, bundle dir) -> manifest
    default_processor: Callable[[Any], Any]  # config -> HF image processor used when a checkpoint ships none
    tolerances: Tolerances = Tolerances()
    split_vision: bool = False  # offers vision_frontend + vision_transformer in place of vision_encoder
    # VLMs: (HF model, input_ids [1, seq] tensor, runtime-processed image) -> the image kwargs of HF generate()
    reference_inputs: Callable[[Any, Any, Any], dict[str, Any]] | None = None

    def export_components(self, split_vision: bool = False) -> tuple[ComponentDef, ...]:
        if not split_vision:
            return self.components
        if not self.split_vision:
            raise UnsupportedModelError(f"family {self.name} has no vision split point",
                                        "export without --split-vision")
        from pocketvlm.export.families.vision_split import split

        parts: list[ComponentDef] = []
        for comp in self.components:
            parts += list(split(comp)) if comp.name == "vision_encoder" else [comp]
        return tuple(parts)

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"family {self.name}: duplicate component names {names}")
        if self.task not in TASKS:
            raise ValueError(f"family {self.name}: unknown task {self.task!r}")
        if not self.model_types:
            raise ValueError(f"family {self.name}: no model_types")

    def component(self, name: str) -> ComponentDef:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)


FAMILIES: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    if spec.name in FAMILIES:
        raise ValueError(f"family {spec.name} registered twice")
    taken = {mt for fam in FAMILIES.values() for mt in fam.model_types}
    clash = taken & set(spec.model_types)
    if clash:
        raise ValueError(f"model_type(s) {sorted(clash)} already registered")
    FAMILIES[spec.name] = spec
    return spec


def _load_all() -> None:
    # One import line per family module; each module calls register() at import.
    from pocketvlm.export.families import clip, idefics3, qwen2_5_vl, qwen2_vl, qwen3_vl, siglip  # noqa: F401


def families() -> dict[str, FamilySpec]:
    _load_all()
    return FAMILIES


def family_for_model_type(model_type: str) -> FamilySpec:
    for spec in families().values():
        if model_type in spec.model_types:
            return spec
    supported = sorted(mt for spec in FAMILIES.values() for mt in spec.model_types)
    raise UnsupportedModelError(
        f"model_type '{model_type}' is not supported (registered: {', '.join(supported)})",
        "use a checkpoint of a registered family, or add a family module under export/families/",
    )


def get_family(name: str) -> FamilySpec:
    if name not in families():
        registered = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(f"model family '{name}' is not registered (registered: {registered})",
                                    "re-export with a pocketvlm version that has this family")
    return FAMILIES[name]
