"""Stacked projections (Q/K/V, gate/up) in the static decoder: lossless, and the same answers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.backends.fused_projections import DecoderProjections, FusedProjection
from inference.backends.transformers_backend import TransformersBackend
from tests.lab.chat import image_message
from tests.lab.decoding import decode_alone, fixed_greedy, prompt_for

REQUESTS = [
    ([image_message("Describe the picture.")], Image.new("RGB", (90, 40), (10, 200, 90)), 30),
    ([{"role": "user", "content": "Tell me a story."}], None, 22),
]


def projection_groups(text_model) -> list[list[torch.nn.Module]]:
    cross = set(text_model.cross_attention_layers)
    groups = []
    for index, layer in enumerate(text_model.layers):
        if index not in cross:
            groups.append([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
        groups.append([layer.mlp.gate_proj, layer.mlp.up_proj])
    return groups


def test_stacked_4bit_layers_keep_every_weight_bit_for_bit(tiny_model_dir):
    import bitsandbytes.functional as bnbf

    # Stacked before any forward: on the CPU bitsandbytes re-lays a weight out at its first forward.
    model = TransformersBackend(tiny_model_dir, device="cpu", load_in_4bit=True).model
    text = model.model.language_model
    groups = projection_groups(text)
    assert all(part.weight.quant_state.nested for group in groups for part in group)
    before = [
        [bnbf.dequantize_4bit(part.weight.data, part.weight.quant_state).clone() for part in group] for group in groups
    ]

    stacked = DecoderProjections(text, fuse=True)

    assert stacked.fused == len(groups)
    fused_modules = list(stacked.attention.values()) + list(stacked.mlp.values())
    for group, weights in zip(groups, before):
        for part, weight in zip(group, weights):
            assert torch.equal(bnbf.dequantize_4bit(part.weight.data, part.weight.quant_state), weight)
    for module in fused_modules:
        assert isinstance(module, FusedProjection)
        whole = bnbf.dequantize_4bit(module.stacked.weight.data, module.stacked.weight.quant_state)
        assert whole.shape == (sum(module.sizes), before[0][0].shape[1])
    whole_qkv = stacked.attention["0"].stacked.weight
    assert torch.equal(bnbf.dequantize_4bit(whole_qkv.data, whole_qkv.quant_state), torch.cat(before[0]))
    # The parts are views of the stacked bytes, not copies.
    q_proj = groups[0][0]
    assert q_proj.weight.data.data_ptr() == whole_qkv.data.data_ptr()

    x = torch.randn(4, 1, before[0][0].shape[1])
    for module, group in zip([stacked.attention["0"], stacked.mlp["0"]], [groups[0], groups[1]]):
        for together, alone in zip(module(x), [part(x) for part in group]):
            torch.testing.assert_close(together, alone, atol=1e-2, rtol=1e-2)  # bf16 compute


def test_stacked_16bit_layers_share_memory_and_compute_the_same(tiny_model_dir):
    model = TransformersBackend(tiny_model_dir, device="cpu").model
    text = model.model.language_model
    groups = projection_groups(text)
    x = torch.randn(3, 1, groups[0][0].in_features)
    expected = [part(x) for part in groups[0]]

    stacked = DecoderProjections(text, fuse=True)

    assert stacked.fused == len(groups)
    whole = stacked.attention["0"].stacked.weight
    assert groups[0][0].weight.data_ptr() == whole.data_ptr()
    for together, alone in zip(stacked.attention["0"](x), expected):
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fuse", [True, False])
def test_batched_answers_with_and_without_stacking_match_single_ones(tiny_model_dir, fuse):
    single = TransformersBackend(tiny_model_dir, device="cpu")
    batched = TransformersBackend(
        tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=2, fuse_projections=fuse
    )
    assert (batched.projections.fused > 0) is fuse
    for messages, image, tokens in REQUESTS:
        expected: list[str] = []
        single.generate(prompt_for(single, messages, image), fixed_greedy(tokens), expected.append, lambda: False)
        answer = decode_alone(batched, prompt_for(batched, messages, image), fixed_greedy(tokens), slot=1)
        assert answer == "".join(expected)


def test_fusing_is_on_by_default_wherever_the_static_decoder_runs(tiny_model_dir):
    alone = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=128)
    together = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=128, max_batch_size=2)
    unfused = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=128, fuse_projections=False)
    assert alone.projections.fused > 0
    assert together.projections.fused > 0
    assert unfused.projections.fused == 0
