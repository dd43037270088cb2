"""The planner's per-GPU placement as a device_map of transformers 5 Mllama module paths.

The 90B in 16 bits over 3 x 80 GB (the seed's server): checked against transformers' own model,
built from the published config on the meta device (no memory), with accelerate's check.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate.utils import check_device_map
from transformers import MllamaConfig, MllamaForConditionalGeneration

from inference.placement import LAYER_MODULE, describe, planned_device_map, resolve
from inference.planner import plan
from inference.planner.gpus import parse_gpus
from tests.lab.published import META_90B, fixture_dir

MODEL_90B = fixture_dir(META_90B)
CONTEXT = 8192


@pytest.fixture(scope="module")
def model_90b() -> MllamaForConditionalGeneration:
    config = MllamaConfig(**json.loads((MODEL_90B / "config.json").read_text()))
    with torch.device("meta"):
        return MllamaForConditionalGeneration(config)


@pytest.fixture(scope="module")
def map_90b() -> dict:
    return planned_device_map(MODEL_90B, parse_gpus("3x80GB"), [0, 1, 2], context=CONTEXT)


def layer_devices(device_map: dict) -> list:
    layers = {int(m.rsplit(".", 1)[1]): d for m, d in device_map.items() if m.startswith(LAYER_MODULE.format(""))}
    return [layers[i] for i in sorted(layers)]


def test_90b_over_three_80gb_gpus_puts_every_parameter_of_the_real_model_on_a_gpu(model_90b, map_90b):
    check_device_map(model_90b, map_90b)  # raises naming any parameter without a device
    modules = dict(model_90b.named_modules())
    assert set(map_90b) <= set(modules), "every key is a module path of transformers' MllamaForConditionalGeneration"
    assert set(map_90b.values()) == {0, 1, 2}
    assert len(layer_devices(map_90b)) == 100


def test_90b_map_keeps_the_vision_side_and_embeddings_first_the_head_last_and_layers_contiguous(map_90b):
    for module in (
        "model.vision_model",
        "model.multi_modal_projector",
        "model.language_model.embed_tokens",
        "model.language_model.rotary_emb",
    ):
        assert map_90b[module] == 0, module
    assert map_90b["model.language_model.norm"] == 2 and map_90b["lm_head"] == 2
    devices = layer_devices(map_90b)
    assert devices == sorted(devices), "layer i+1 is on the same GPU as layer i or the next one"
    assert devices[0] == 0 and devices[-1] == 2


def test_90b_map_matches_the_planners_layer_ranges_per_gpu(map_90b):
    result = plan(MODEL_90B, "3x80GB", context=CONTEXT)
    assert result.fits
    devices = layer_devices(map_90b)
    for load in result.estimate.loads:
        ranges = [re.fullmatch(r"layers (\d+)-(\d+)", h) for h in load.holds()]
        ((first, last),) = [(int(m.group(1)), int(m.group(2))) for m in ranges if m]
        on_this_gpu = [i for i, d in enumerate(devices) if d == load.index]
        assert on_this_gpu == list(range(first, last + 1)), load.holds()
    # the split docs/planner.md prints for this model and these GPUs
    assert describe(map_90b).endswith("layers 67-99") and "layers 0-31" in describe(map_90b)
    assert [load.holds() for load in result.estimate.loads][1] == ["layers 32-66"]


def test_planner_placement_over_chosen_gpus_uses_their_cuda_indices():
    kwargs = resolve("cuda", [1, 2, 3], "planner", {}, parse_gpus("4x80GB"), model_path=MODEL_90B, context=CONTEXT)
    device_map = kwargs["device_map"]
    assert set(device_map.values()) == {1, 2, 3} and "max_memory" not in kwargs
    assert device_map["model.vision_model"] == 1 and device_map["lm_head"] == 3


def test_one_gpu_keeps_the_single_gpu_path_and_several_get_accelerates_balanced_map():
    host = parse_gpus("4x80GB")
    one = dict(model_path=MODEL_90B, free_memory=lambda index: 70 << 30)
    assert resolve("cuda", [], "auto", {}, host[:1], **one) == {"device_map": "cuda"}
    assert resolve("cuda", [2], "planner", {}, host, **one) == {"device_map": "cuda:2"}
    # accelerate's balanced split over the chosen GPUs only (no CPU key: nothing is offloaded to the CPU)
    assert resolve("cuda", [0, 2], "auto", {}, host, **one) == {
        "device_map": "balanced",
        "max_memory": {0: 70 << 30, 2: 70 << 30},
    }
    assert resolve("cuda", [], "auto", {}, host[:2], **one)["max_memory"] == {0: 70 << 30, 1: 70 << 30}
    assert resolve("cuda", [], "max_memory", {0: "70GiB", 1: "60GiB"}, host, **one) == {
        "device_map": "balanced",
        "max_memory": {0: "70GiB", 1: "60GiB"},
    }
    assert resolve("cpu", [], "auto", {}, [], **one) == {"device_map": "cpu"}
