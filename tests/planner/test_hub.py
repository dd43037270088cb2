"""A repo id is read through HF_ENDPOINT: config, index and safetensors headers, never the weights."""

from __future__ import annotations

import pytest

from inference.planner import breakdown, load_checkpoint, plan
from inference.planner.checkpoint import CheckpointError
from tests.lab.published import BNB_90B, META_11B, fixture_config, fixture_dir
from tests.planner.realshape import model_tensors, write_sparse_checkpoint


def test_repo_id_on_the_mirror_is_planned_from_its_headers_without_downloading_weights(mirror, tiny_model_dir):
    m = mirror({"vlmkit-test/tiny-mllama": tiny_model_dir})
    local = breakdown(tiny_model_dir, context=64)
    remote = load_checkpoint("vlmkit-test/tiny-mllama")
    assert remote.source == "headers" and m.url in remote.detail
    assert breakdown(remote, context=64)["weights"] == local["weights"]
    weights_file = tiny_model_dir / "model.safetensors"
    header_length = 8 + int.from_bytes(weights_file.read_bytes()[:8], "little")
    assert m.sent_for("model.safetensors") <= max(header_length, 100_001)
    assert m.sent_for("model.safetensors") < weights_file.stat().st_size


def test_sharded_real_shape_repo_is_read_by_range_requests_only(mirror, tmp_path):
    config = fixture_config(META_11B)
    folder = tmp_path / "served"
    total = write_sparse_checkpoint(folder, config, model_tensors(config), shards=5)
    m = mirror({META_11B: folder})
    checkpoint = load_checkpoint(META_11B)
    assert checkpoint.source == "headers" and checkpoint.index_total == total
    assert checkpoint.tensor_bytes == total
    shard_requests = [r for r in m.requests if r["path"].endswith(".safetensors") and r["method"] == "GET"]
    assert shard_requests and all(r["range"] for r in shard_requests)
    assert sum(r["sent"] for r in shard_requests) < 5 * 200_000


def test_repo_with_only_config_on_the_mirror_is_derived_from_the_config(mirror):
    m = mirror({BNB_90B: fixture_dir(BNB_90B)})
    result = plan(BNB_90B, "80GB")
    assert result.checkpoint.source == "config" and m.url in result.checkpoint.detail
    assert result.fits
    local = plan(fixture_dir(BNB_90B), "80GB")
    assert result.estimate.total == local.estimate.total


def test_repo_with_index_but_unreadable_shards_falls_back_to_the_index(mirror, tmp_path):
    config = fixture_config(META_11B)
    folder = tmp_path / "index-only"
    total = write_sparse_checkpoint(folder, config, model_tensors(config), shards=3)
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    mirror({META_11B: folder})
    checkpoint = load_checkpoint(META_11B)
    assert checkpoint.source == "index"
    assert breakdown(checkpoint, context=128)["weights"] == total


def test_unknown_repo_on_the_mirror_is_a_clear_error(mirror):
    mirror({})
    with pytest.raises(CheckpointError, match="no such repo"):
        load_checkpoint("nobody/nothing")


def test_unreachable_mirror_is_a_clear_error(hf_home, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(CheckpointError, match="127.0.0.1:9"):
        load_checkpoint("nobody/nothing")
