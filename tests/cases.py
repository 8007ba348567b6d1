"""What the tests run over, read from the registries: adding a family or a target touches no test file.

``@pytest.mark.parity(target)`` marks a test function as the tiny-config export-and-parity test of ``target`` for
every family it is parametrized over (``family``); ``tests/test_layout.py`` fails when a registered (family,
target) pair has none.
"""

from __future__ import annotations

from pocketvlm.export.registry import families

DUAL_ENCODERS = tuple(name for name, spec in families().items() if spec.task == "zero_shot_image_classification")
VLM_FAMILIES = tuple(name for name, spec in families().items() if spec.task == "image_text_to_text")
SPLIT_FAMILIES = tuple(name for name, spec in families().items() if spec.split_vision)
