"""Quantization pieces: the typed config, the 4-bit block quantizer and the export-friendly rewrites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketvlm.export.int4 import dequantize_blocks, quantize_blocks
from pocketvlm.export.quantize import QuantConfig, QuantSpec
from pocketvlm.export.rewrites import PatchEmbeddingAsMatMul, swapped
from pocketvlm.runtime.errors import QuantizationError


def test_parse_per_component_config(tmp_path):
    config = QuantConfig.parse("int4,text_encoder=int8")
    assert config.for_component("image_encoder").method == "int4"
    assert config.for_component("text_encoder").method == "int8"
    path = tmp_path / "q.json"
    path.write_text(__import__("json").dumps(config.to_json()))
    assert QuantConfig.parse(str(path)) == config
    with pytest.raises(QuantizationError):
        QuantSpec(method="int4", block_size=24)


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quantizer_round_trip_and_beats_absmax(bits):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((200, 64)).astype(np.float32)  # K not a multiple of the block: padded
    packed, scales = quantize_blocks(weight, 32, bits)
    restored = dequantize_blocks(packed, scales, 200, bits)
    assert restored.shape == weight.shape
    levels = 2 ** (bits - 1)
    blocks = np.zeros((224, 64), np.float32)
    blocks[:200] = weight
    blocks = blocks.T.reshape(64, 7, 32)
    absmax = np.abs(blocks).max(-1, keepdims=True) / levels
    rtn = (np.clip(np.rint(blocks / absmax), -levels, levels - 1) * absmax).reshape(64, -1)[:, :200].T
    assert ((restored - weight) ** 2).mean() <= ((rtn - weight) ** 2).mean()
    assert np.abs(restored - weight).max() <= np.abs(weight).max() / (levels - 1)


def test_patch_embedding_as_matmul_is_exact():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)
    pixels = torch.randn(2, 3, 32, 48)
    assert torch.allclose(PatchEmbeddingAsMatMul(conv)(pixels), conv(pixels), atol=1e-5)
    with pytest.raises(ValueError):
        PatchEmbeddingAsMatMul(torch.nn.Conv2d(3, 16, kernel_size=8, stride=4))


def test_swapped_restores_on_error():
    parent = torch.nn.Sequential(torch.nn.Identity())
    original = parent[0]
    with pytest.raises(RuntimeError), swapped(parent, "0", torch.nn.ReLU()):
        assert isinstance(parent[0], torch.nn.ReLU)
        raise RuntimeError
    assert parent[0] is original
