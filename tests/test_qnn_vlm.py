"""--target qnn for the VLM families: vision encoder and decoder (prefill + decode graphs) compiled by Qualcomm's HTP
backend for two SoCs, generated tokens on the emulated HTP against PyTorch, and the split vision stages."""

from __future__ import annotations

import pytest

from pocketvlm.export.verify.vlm_parity import vlm_parity
from pocketvlm.runtime.manifest import load_bundle
from tests.cases import VLM_FAMILIES
from tests.qnn_cases import MIN_HTP_SHARE, assert_split_chains, check_contexts, qnn_bundle
from tests.test_vlm import assert_passes


@pytest.mark.parity("qnn")
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_fp16_on_the_htp_greedy_tokens_through_prefill_and_decode(workspace, photos, family):
    """Vision encoder >= 95% on the HTP; prefill (16-token chunks) + 8 decode steps on the emulated HTP give PyTorch's
    greedy tokens, or a first divergence on a near-tie (the fp16 rule, margin shown in the report)."""
    bundle_dir = qnn_bundle(workspace, family, size="fp16")
    bundle = load_bundle(bundle_dir)
    records = bundle.manifest["components"]
    assert set(records["text_decoder"]["qnn"]["contexts"]["SM8650"]["entries"]) == {"prefill_16", "decode"}
    for name, record in records.items():
        check_contexts(record, name, MIN_HTP_SHARE if name != "text_decoder" else None)
    report = vlm_parity(bundle_dir, workspace.checkpoint(family, "fp16"),
                        photos={k: photos[k] for k in ("astronaut", "camera")}, steps=9)
    for row in report["photos"]:
        print(family, row["greedy"])
    assert_passes(report)


def test_split_vision_stages_each_on_the_htp_chain_to_the_unsplit_encoder(workspace, photos):
    assert_split_chains(workspace, photos, "qwen2_vl")
