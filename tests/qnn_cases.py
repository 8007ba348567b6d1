"""What the QNN tests share: the SoCs, the small static shapes, the bundle fixture key and the per-SoC context checks.
Importing it skips the importing module where onnxruntime-qnn is absent, except in CI, where it must be present."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pocketvlm.export.registry import get_family
from pocketvlm.export.static_shapes import StaticShapes
from pocketvlm.runtime import qnn
from pocketvlm.runtime.manifest import load_bundle

if not qnn.available():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the QNN tests: .ci/run installs pocketvlm[npu] (onnxruntime-qnn)")
    pytest.skip("onnxruntime-qnn is not installed (pip install 'pocketvlm[npu]')", allow_module_level=True)

SOCS = ("SM8650", "SM8750")
# Qwen2.5-VL at 112 px: four attention windows (at 56 px one window hid a wrong window reorder on the HTP)
SHAPES = {"qwen3_vl": StaticShapes(prefill_length=16, kv_capacity=256, image_size=64),
          "qwen2_5_vl": StaticShapes(prefill_length=16, kv_capacity=256, image_size=112)}
DEFAULT_SHAPES = StaticShapes(prefill_length=16, kv_capacity=256, image_size=56)
MIN_HTP_SHARE = 0.95  # the floor for encoders; 100% is the aim and every CPU node is printed


def qnn_bundle(workspace, family: str, quant: str = "fp16", size: str = "tiny"):
    return workspace.bundle(family, quant, size, target="qnn", socs=SOCS, shapes=SHAPES.get(family, DEFAULT_SHAPES))


def check_contexts(record: dict, component: str, floor: float | None) -> None:
    """Both SoCs compiled, their binaries really differ, and (encoders) the HTP share is at least ``floor``; every
    node left on CPU is printed with the EP's reason."""
    contexts = record["qnn"]["contexts"]
    assert list(contexts) == list(SOCS)
    assert {c["soc_model"] for c in contexts.values()} == {qnn.SOCS[s].model for s in SOCS}
    for entry in contexts[SOCS[0]]["entries"]:
        rows = [contexts[soc]["entries"][entry] for soc in SOCS]
        assert rows[0]["binary_sha256"] != rows[1]["binary_sha256"], f"{component}/{entry}: same binary for both"
        for soc, row in zip(SOCS, rows, strict=True):
            share = row["htp_nodes"] / row["total_nodes"]
            print(f"{component}/{entry} {soc}: {row['htp_nodes']}/{row['total_nodes']} on HTP, "
                  f"{row['partitions']} partition(s); on CPU: {row['cpu_ops'] or 'nothing'}")
            if floor is not None:
                assert share >= floor, (component, entry, soc, row["cpu_ops"])


def assert_split_chains(workspace, photos, family: str) -> None:
    """--split-vision on --target qnn: each stage compiles on its own (a user may put the frontend on CPU/GPU and
    the transformer on the HTP), and the chained stages give the unsplit encoder's output."""
    from pocketvlm.runtime.dual_encoder import DualEncoder
    from pocketvlm.runtime.vlm import VisionLanguageModel

    size = "tiny" if family == "clip" else "fp16"
    whole = qnn_bundle(workspace, family, size=size)  # the parity tests' bundle
    split = workspace.bundle(family, "fp16", size, target="qnn", socs=SOCS, split_vision=True,
                             shapes=SHAPES.get(family, DEFAULT_SHAPES))
    records = load_bundle(split).manifest["components"]
    stages = get_family(family).vision_split.stages
    assert set(stages) <= set(records)
    for stage in stages:
        check_contexts(records[stage], stage, MIN_HTP_SHARE)
    image = photos["camera"]
    if family == "clip":
        got, want = (DualEncoder.load(b).image_features([image]) for b in (split, whole))
    else:
        models = [VisionLanguageModel.load(b) for b in (split, whole)]
        got, want = (m.encode_image(m.prepare(image, "hi")[1])["image_embeds"] for m in models)
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine >= get_family(family).tolerances.limit("min_cosine", "fp16", "qnn"), cosine
