"""Caches and activations: what grows with what, counted from the config's own numbers."""

from __future__ import annotations

from inference.planner import breakdown
from inference.planner.mllama import MllamaDims
from tests.lab.published import BNB_90B, META_11B, fixture_config, fixture_dir


def _kv_bytes_per_token_per_layer(config: dict) -> int:
    text = config["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_key_value_heads"] * head_dim * 2  # keys and values, bf16


def test_kv_cache_covers_only_the_self_attention_layers_for_every_token_of_every_sequence():
    config = fixture_config(BNB_90B)
    text = config["text_config"]
    self_layers = text["num_hidden_layers"] - len(text["cross_attention_layers"])
    numbers = breakdown(fixture_dir(BNB_90B), context=4096, batch=3)
    assert numbers["kv_cache"] == self_layers * _kv_bytes_per_token_per_layer(config) * 4096 * 3


def test_cross_attention_cache_holds_every_tile_of_every_image_for_each_cross_layer():
    config = fixture_config(BNB_90B)
    vision = config["vision_config"]
    tokens_per_image = vision["max_num_tiles"] * ((vision["image_size"] // vision["patch_size"]) ** 2 + 1)
    cross_layers = len(config["text_config"]["cross_attention_layers"])
    numbers = breakdown(fixture_dir(BNB_90B), context=4096, batch=2, images=2)
    assert (
        numbers["cross_attention_cache"]
        == cross_layers * _kv_bytes_per_token_per_layer(config) * tokens_per_image * 2 * 2
    )


def test_image_tokens_are_the_6404_the_cross_attention_mask_is_built_against():
    # serving.md: the 11B's cross-attention mask against one 4-tile image is [1, 1, 42, 6404]
    assert MllamaDims.from_config(fixture_config(META_11B)).image_tokens == 6404


def test_text_only_serving_has_no_cross_attention_cache_and_no_vision_activations():
    with_image = breakdown(fixture_dir(META_11B), context=2048, images=1)
    text_only = breakdown(fixture_dir(META_11B), context=2048, images=0)
    assert text_only["cross_attention_cache"] == 0
    assert text_only["activations"] < with_image["activations"]


def _activations(context: int, batch: int = 1, bits: int | None = None) -> int:
    return breakdown(fixture_dir(META_11B), context=context, batch=batch, bits=bits)["activations"]


def test_short_prompts_peak_in_the_vision_encoder_so_the_context_does_not_change_the_peak():
    assert _activations(512) == _activations(1024)


def test_long_prompts_peak_in_the_text_prefill_which_grows_with_the_context():
    assert _activations(32768) > _activations(16384) > _activations(1024)


def test_activations_grow_with_the_batch():
    assert _activations(2048, batch=4) > _activations(2048)


def test_weights_do_not_depend_on_how_it_is_served():
    a = breakdown(fixture_dir(META_11B), context=1024)
    b = breakdown(fixture_dir(META_11B), context=65536, batch=8)
    assert a["weights"] == b["weights"]


def test_breakdown_numbers_add_up_and_separate_what_torch_sees_from_context_and_margin():
    n = breakdown(fixture_dir(BNB_90B), context=8192)
    parts = [k for k in n if k.startswith("weights_")] + [
        "kv_cache",
        "cross_attention_cache",
        "activations",
        "cuda_context",
        "margin",
    ]
    assert n["total"] == sum(n[k] for k in parts)
    assert n["torch_allocated"] == n["total"] - n["cuda_context"] - n["margin"]
    assert all(isinstance(n[k], int) for k in parts)


def test_quantized_weights_need_a_dequantization_buffer_that_16_bit_weights_do_not():
    assert _activations(32768, bits=4) > _activations(32768, bits=16)
