"""Weight bytes: exact for real checkpoints and real shapes, within 1% of the published checkpoints."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from inference.planner import breakdown, load_checkpoint
from inference.planner.checkpoint import from_config
from inference.planner.mllama import MllamaDims, dense_tensors, parameter_count
from tests.lab.published import BNB_11B, BNB_90B, META_11B, META_90B, fixture_config, fixture_dir
from tests.planner.realshape import model_tensors, nbytes, write_sparse_checkpoint


def _file_tensor_bytes(folder) -> int:
    """Sum of the tensors' bytes as the safetensors library reads them (not the planner's reader)."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                total += _slice_bytes(f.get_slice(name))
    return total


def _slice_bytes(s) -> int:
    sizes = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I32": 4, "I64": 8}
    n = 1
    for d in s.get_shape():
        n *= d
    return n * sizes[s.get_dtype()]


def test_tiny_checkpoint_weight_bytes_equal_the_sum_of_its_tensors_exactly(tiny_model_dir):
    numbers = breakdown(tiny_model_dir, context=64)
    assert load_checkpoint(tiny_model_dir).source == "headers"
    assert numbers["weights"] == _file_tensor_bytes(tiny_model_dir)


def test_tiny_config_alone_derives_the_same_tensors_as_the_checkpoint_holds(tiny_model_dir):
    real = {t.name: t for t in load_checkpoint(tiny_model_dir).tensors}
    derived = {
        t.name: t for t in from_config("tiny", json.loads((tiny_model_dir / "config.json").read_text()), "").tensors
    }
    assert derived.keys() == real.keys()
    assert all(
        (derived[n].dtype, derived[n].shape, derived[n].nbytes) == (real[n].dtype, real[n].shape, real[n].nbytes)
        for n in real
    )


@pytest.mark.parametrize("repo_id", [META_11B, META_90B])
def test_config_tensor_list_equals_transformers_models_parameters(repo_id):
    config = fixture_config(repo_id)
    expected = model_tensors(config)
    derived = {t.name: ("BF16", t.shape) for t in dense_tensors(MllamaDims.from_config(config))}
    assert derived == expected


def test_real_shape_sharded_checkpoint_gives_exact_weight_bytes(tmp_path):
    config = fixture_config(META_11B)
    tensors = model_tensors(config)
    folder = tmp_path / "real-shape-11b"
    data_bytes = write_sparse_checkpoint(folder, config, tensors, shards=5)
    assert data_bytes == sum(nbytes(*spec) for spec in tensors.values())
    checkpoint = load_checkpoint(folder)
    assert checkpoint.source == "headers"
    assert breakdown(checkpoint, context=128)["weights"] == data_bytes


def test_index_without_shards_keeps_the_index_total_exactly(tmp_path):
    config = fixture_config(META_11B)
    folder = tmp_path / "index-only"
    total = write_sparse_checkpoint(folder, config, model_tensors(config), shards=3)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    checkpoint = load_checkpoint(folder)
    assert checkpoint.source == "index"
    assert breakdown(checkpoint, context=128)["weights"] == total


def test_bnb_4bit_rules_reproduce_bitsandbytes_own_checkpoint(tiny_bnb_dirs):
    real_ckpt = load_checkpoint(tiny_bnb_dirs["nf4"])
    real = {t.name: t for t in real_ckpt.tensors}
    derived = {t.name: t for t in from_config("tiny", real_ckpt.config, "").tensors}
    assert derived.keys() == real.keys()
    state = ".quant_state.bitsandbytes__nf4"
    # every tensor but the quant-state JSON (whose float offset's digits vary) is exactly the same
    assert all((derived[n].dtype, derived[n].shape) == (real[n].dtype, real[n].shape) for n in real if state not in n)
    assert all(abs(derived[n].nbytes - real[n].nbytes) <= 8 for n in real if state in n)
    assert real_ckpt.tensor_bytes == _file_tensor_bytes(tiny_bnb_dirs["nf4"])


def test_bnb_8bit_rules_reproduce_bitsandbytes_own_checkpoint_exactly(tiny_bnb_dirs):
    real_ckpt = load_checkpoint(tiny_bnb_dirs["int8"])
    real = {t.name: (t.dtype, t.shape, t.nbytes) for t in real_ckpt.tensors}
    derived = {t.name: (t.dtype, t.shape, t.nbytes) for t in from_config("tiny", real_ckpt.config, "").tensors}
    assert derived == real


def test_requested_4bit_from_a_16bit_checkpoint_matches_what_bitsandbytes_writes(tiny_model_dir, tiny_bnb_dirs):
    requested = breakdown(tiny_model_dir, context=64, bits=4)["weights"]
    actual = load_checkpoint(tiny_bnb_dirs["nf4"]).tensor_bytes
    assert requested == pytest.approx(actual, rel=0.005)


@pytest.mark.parametrize("repo_id", [BNB_90B, BNB_11B, META_11B])
def test_weight_bytes_are_within_one_percent_of_the_published_checkpoint(repo_id, public_sizes):
    weights = breakdown(fixture_dir(repo_id), context=128)["weights"]
    assert weights == pytest.approx(public_sizes[repo_id]["total_bytes"], rel=0.01)


def test_unsloth_90b_bnb_weights_agree_with_every_published_shard_size(public_sizes):
    """The listed shards (3 significant digits) bound the total: known ones summed, unknown ones at most 4.98 GB each."""
    sizes = public_sizes[BNB_90B]
    known = sum(sizes["shards_gb"].values()) * 1e9
    unknown = sizes["shard_count"] - len(sizes["shards_gb"])
    low, high = (
        known + unknown * sizes["shards_gb"]["10"] * 1e9,
        known + unknown * max(sizes["shards_gb"].values()) * 1e9,
    )
    weights = breakdown(fixture_dir(BNB_90B), context=128)["weights"]
    assert low * 0.995 <= weights <= high * 1.005


@pytest.mark.parametrize("repo_id", [META_11B, META_90B])
def test_parameter_count_is_within_one_percent_of_the_model_card(repo_id, public_sizes):
    dims = MllamaDims.from_config(fixture_config(repo_id))
    assert parameter_count(dims) == pytest.approx(public_sizes[repo_id]["parameters"], rel=0.01)


def test_bnb_checkpoint_keeps_lm_head_and_embeddings_in_16_bit_and_quantizes_the_rest():
    tensors = {t.name: t for t in load_checkpoint(fixture_dir(BNB_90B)).tensors}
    assert tensors["language_model.lm_head.weight"].dtype == "BF16"
    assert tensors["language_model.model.embed_tokens.weight"].dtype == "BF16"
    assert tensors["language_model.model.layers.0.mlp.up_proj.weight"].dtype == "U8"
    assert "vision_model.transformer.layers.0.mlp.fc1.weight.absmax" in tensors
    assert "multi_modal_projector.weight.quant_map" in tensors
