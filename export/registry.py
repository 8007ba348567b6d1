"""The family registry: one line per family module. Each module declares its ``SPEC`` (``spec.FamilySpec``) and
knows nothing of the others; adding a family is one new file under ``export/families/`` and one line here.
"""

from __future__ import annotations

from pocketvlm.export.families import clip, idefics3, qwen2_5_vl, qwen2_vl, qwen3_vl, siglip
from pocketvlm.export.spec import FamilySpec, SpecError
from pocketvlm.runtime.errors import UnsupportedModelError

REGISTERED: tuple[FamilySpec, ...] = (
    clip.SPEC,
    siglip.SPEC,
    idefics3.SPEC,
    qwen2_vl.SPEC,
    qwen2_5_vl.SPEC,
    qwen3_vl.SPEC,
)


def _index(specs: tuple[FamilySpec, ...]) -> dict[str, FamilySpec]:
    index: dict[str, FamilySpec] = {}
    for spec in specs:
        if spec.name in index:
            raise SpecError(f"family {spec.name} registered twice")
        clash = {mt for fam in index.values() for mt in fam.model_types} & set(spec.model_types)
        if clash:
            raise SpecError(f"model_type(s) {sorted(clash)} already registered")
        index[spec.name] = spec
    return index


FAMILIES: dict[str, FamilySpec] = _index(REGISTERED)


def families() -> dict[str, FamilySpec]:
    return FAMILIES


def family_for_model_type(model_type: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    supported = sorted(mt for spec in FAMILIES.values() for mt in spec.model_types)
    raise UnsupportedModelError(
        f"model_type '{model_type}' is not supported (registered: {', '.join(supported)})",
        "use a checkpoint of a registered family, or add a family module under export/families/",
    )


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        registered = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(f"model family '{name}' is not registered (registered: {registered})",
                                    "re-export with a pocketvlm version that has this family")
    return FAMILIES[name]
