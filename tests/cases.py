"""What the tests run over, read from the registries: adding a family or a target touches no test file.

``@pytest.mark.parity(target)`` marks a test function as the tiny-config export-and-parity test of ``target`` for
every family it is parametrized over (``family``); ``tests/test_layout.py`` fails when a registered (family,
target) pair has none.
"""

from __future__ import annotations

from pocketvlm.export.registry import families

DUAL_ENCODERS = tuple(name for name, spec in families().items() if spec.task == "zero_shot_image_classification")
VLM_FAMILIES = tuple(name for name, spec in families().items() if spec.task == "image_text_to_text")
# the families with a vision split point (--split-vision), and the VLMs among them
SPLIT_FAMILIES = tuple(name for name, spec in families().items() if spec.split_vision)
SPLIT_VLM_FAMILIES = tuple(name for name in SPLIT_FAMILIES if name in VLM_FAMILIES)
# the dynamic-resolution VLMs: their vision encoder takes patch rows with 2-D positions (the Qwen image processor)
DYNAMIC_RESOLUTION_FAMILIES = tuple(
    name for name in VLM_FAMILIES
    if "vision_position_ids" in {t.name for t in families()[name].component("vision_encoder").signature(
        families()[name].tiny_config())[0]})
