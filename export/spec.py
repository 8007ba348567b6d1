"""What a model family declares, as data: its named components (wrapper, example inputs, tensor specs with symbolic
dims), how to load a checkpoint, a seeded tiny config for tests, the bundle metadata the runtime needs, and its parity
tolerances. The families themselves are listed in ``registry.py``; nothing else in the exporter branches on
architecture names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketvlm.runtime.errors import ExportError

if TYPE_CHECKING:
    import torch

class SpecError(ExportError):
    """A family module declares something inconsistent: a bug in pocketvlm or in a user's own family module."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, "fix the family module's declaration in export/families/")


COMPONENT_NAMES = frozenset({"image_encoder", "text_encoder", "vision_encoder", "vision_frontend",
                             "vision_transformer", "image_frontend", "image_transformer", "token_embedding",
                             "text_decoder"})
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
    # a split stage (``vision_split.stages``): (config, feeds of the unsplit component) -> this stage's feeds, so
    # static-shape targets derive a stage's examples from the runtime's own feeds of the whole component
    stage_feeds: Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.name not in COMPONENT_NAMES:
            raise SpecError(f"component name {self.name!r} is not in the shared vocabulary {sorted(COMPONENT_NAMES)}")


@dataclass(frozen=True)
class VisionSplit:
    """A family's vision split point: its image / vision component as two stages, with one tensor,
    ``vision_hidden``, crossing between them. The frontend ends exactly where the transformer's first encoder layer
    begins (``vision_split.stages`` derives both stages' ComponentDefs from the unsplit one and this).

    - ``component``: the unsplit component (``image_encoder``, ``vision_encoder``); ``stages``: (frontend,
      transformer) component names.
    - ``frontend`` / ``transformer``: full HF model -> the export wrapper of each stage.
    - ``hidden_shape``: config -> shape of ``vision_hidden``; its symbolic dims are the unsplit inputs' own.
    - ``frontend_inputs``: the unsplit inputs the frontend takes; the transformer takes ``vision_hidden`` and the
      rest, so a padding mask the unsplit component takes (``mask``) crosses beside ``vision_hidden``.
    - ``class_token``: row 0 of each image's ``vision_hidden`` is a class token (CLIP).
    - ``holds``: what each stage computes, and ``layout``: how ``vision_hidden``'s rows are laid out and why a mask
      does or does not cross, in words, for the manifest's split report.
    - ``sizes``: (config, bundle metadata) -> example name -> the sizes of ``vision_hidden``'s symbolic dims at the
      family's real image sizes (the report's bytes per image).
    """

    component: str
    stages: tuple[str, str]
    frontend: Callable[[Any], torch.nn.Module]
    transformer: Callable[[Any], torch.nn.Module]
    hidden_shape: Callable[[Any], tuple[int | str, ...]]
    sizes: Callable[[Any, dict[str, Any]], dict[str, dict[str, int]]]
    holds: tuple[str, str]
    layout: str
    frontend_inputs: tuple[str, ...] = ("pixel_values",)
    class_token: bool = False
    mask: str | None = None

    def __post_init__(self) -> None:
        for name in (self.component, *self.stages):
            if name not in COMPONENT_NAMES:
                raise SpecError(f"split component name {name!r} is not in the shared vocabulary "
                                f"{sorted(COMPONENT_NAMES)}")
        if self.mask is not None and self.mask in self.frontend_inputs:
            raise SpecError(f"the split's mask {self.mask!r} must cross to the transformer, not feed the frontend")


@dataclass(frozen=True)
class Tolerances:
    """Parity thresholds of a family, per quantization method: the one place dual-encoder and VLM parity, and the
    tests, read them from.

    Each table maps a method (``fp32``, ``fp16``, ``int8``, ``int4``, ``palette4``), or ``"<target>/<method>"`` where
    one target's quantizer measures differently (Core ML runs fp16 activations; ai-edge-quantizer's int4 is min-max
    weights with int8 activations), to a threshold. ``limit`` looks up ``target/method`` then ``method``; palette4
    falls back to int4's entries (4-bit look-up tables are held to the 4-bit linear thresholds). A method a table
    does not name is not judged by that check.

    - ``min_cosine``: component outputs (dual-encoder embeddings, VLM vision features), worst row;
      ``component_min_cosine`` overrides it per component.
    - ``max_abs``: component outputs, largest absolute error; ``max_abs_relative``: the same over the reference's
      largest magnitude (fp16 is judged against the output's scale).
    - ``min_top1_agreement``: end to end, top-1 equal to the reference's: zero-shot labels over the photos (dual
      encoders); next tokens, teacher-forced on the reference's greedy tokens (VLMs).
    - ``logits_min_cosine``: VLM next-token logits, teacher-forced on the reference's greedy tokens, worst step.
    - ``near_tie_factor``: VLM greedy tokens may first differ from the reference's only where the reference's top-1
      minus top-2 logit there is at most this factor times the bundle's max logit error at that step, and not before
      step ``min_divergence_step``; a method absent from ``near_tie_factor`` must generate the reference's tokens.
    - ``split_chain_max_abs``: a split bundle's two vision stages chained against the unsplit component of the same
      target and method (the tests judge it at each target's unquantized precision).
    - ``pixel_max_abs``: preprocessing (the runtime's pixels against the HF image processor's), any method.
    - ``golden_*``: what the bundle's golden record holds another engine to (the web demo, the phone apps) when it
      replays the Python runtime's run: encoder outputs (``golden_output_max_abs_relative``, over the largest
      recorded magnitude), next-token logits teacher-forced on the recorded tokens and the near-tie margin
      (``golden_logit_max_abs_relative``), label probabilities (``golden_probability_max_abs``), and pixels
      (``golden_pixel_levels`` 8-bit levels after normalisation: resizers in other languages may round one level
      apart). Looser than parity: another engine's kernels sum in another order, and some compute differently
      (onnxruntime-web runs MatMulNBits in fp32 where native ORT quantizes activations to int8).
    """

    min_cosine: dict[str, float] = field(default_factory=lambda: {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99,
                                                                  "int4": 0.98})
    component_min_cosine: dict[str, dict[str, float]] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=lambda: {"fp32": 1e-4})
    max_abs_relative: dict[str, float] = field(default_factory=dict)
    min_top1_agreement: dict[str, float] = field(default_factory=dict)
    logits_min_cosine: dict[str, float] = field(default_factory=dict)
    near_tie_factor: dict[str, float] = field(default_factory=dict)
    min_divergence_step: dict[str, int] = field(default_factory=dict)
    pixel_max_abs: float = 1e-5
    split_chain_max_abs: float = 1e-5
    golden_output_max_abs_relative: dict[str, float] = field(default_factory=lambda: {
        "fp32": 1e-3, "fp16": 2e-2, "int8": 3e-2, "int4": 5e-2})
    golden_logit_max_abs_relative: dict[str, float] = field(default_factory=lambda: {
        "fp32": 1e-3, "fp16": 2e-2, "int8": 3e-2, "int4": 5e-2})
    golden_probability_max_abs: dict[str, float] = field(default_factory=lambda: {
        "fp32": 1e-3, "fp16": 1e-2, "int8": 2e-2, "int4": 5e-2})
    golden_pixel_levels: int = 1
    # --target qnn, checked at export on every compiled entry and output: the emulated HTP's outputs against the same
    # graph on ONNX Runtime's CPU provider (fp16: the fp32 graph; a16w8 / a8w8: the QDQ graph), worst cosine. Catches
    # the backend computing a graph wrongly without an error (seen: a rank-4 RMSNorm, cosine 0.77).
    htp_min_cosine: dict[str, float] = field(default_factory=lambda: {"fp16": 0.999, "a16w8": 0.99, "a8w8": 0.98})

    TABLES = ("min_cosine", "max_abs", "max_abs_relative", "min_top1_agreement", "logits_min_cosine",
              "near_tie_factor", "min_divergence_step", "golden_output_max_abs_relative",
              "golden_logit_max_abs_relative", "golden_probability_max_abs", "htp_min_cosine")

    def limit(self, check: str, method: str, target: str = "", component: str | None = None) -> float | None:
        """The threshold of ``check`` (a table name) for ``method`` on ``target``, or None where it is not judged."""
        if check not in self.TABLES:
            raise SpecError(f"no tolerance table {check!r} (tables: {', '.join(self.TABLES)})")
        tables = [getattr(self, check)]
        if check == "min_cosine" and component is not None:
            tables.insert(0, self.component_min_cosine.get(component, {}))
        methods = (method, "int4") if method == "palette4" else (method,)
        for table in tables:
            for name in methods:
                for key in (f"{target}/{name}", name):
                    if key in table:
                        return table[key]
        return None


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
    vision_split: VisionSplit | None = None  # offers its two stages in place of the vision component
    # VLMs: (HF model, input_ids [1, seq] tensor, runtime-processed image) -> the image kwargs of HF generate()
    reference_inputs: Callable[[Any, Any, Any], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise SpecError(f"family {self.name}: duplicate component names {names}")
        if self.task not in TASKS:
            raise SpecError(f"family {self.name}: unknown task {self.task!r}")
        if not self.model_types:
            raise SpecError(f"family {self.name}: no model_types")
        if self.vision_split is not None and self.vision_split.component not in names:
            raise SpecError(f"family {self.name}: its split point splits {self.vision_split.component!r}, which is "
                            f"not one of its components {names}")

    @property
    def split_vision(self) -> bool:
        """Whether the family has a vision split point (``--split-vision``)."""
        return self.vision_split is not None

    def component(self, name: str) -> ComponentDef:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise SpecError(f"family {self.name} has no component {name!r}")
