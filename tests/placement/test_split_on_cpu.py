"""On the CPU: the tiny model loaded through a device_map built by inference.placement still answers
through a real `vlmkit serve`, and readiness and /metrics report no GPU.

accelerate cannot split a model across CPU "devices" (it has one "cpu" device), so the map is the
planner's placement of the tiny model over two GPUs with every entry sent to "cpu": the split
itself (layer ranges on different devices) waits for the GPU test, test_multi_gpu.py. What runs here
is everything else: the map's keys name every parameter of the real model, from_pretrained takes it,
and the backend feeds a model loaded with a device_map.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from accelerate.utils import check_device_map
from transformers import MllamaForConditionalGeneration

from inference.placement import planned_device_map
from inference.planner.gpus import parse_gpus
from tests.lab.chat import image_message
from tests.lab.server import API_KEY, ServerProcess


@pytest.fixture(scope="module")
def gpu_map(tiny_model_dir) -> dict:
    return planned_device_map(tiny_model_dir, parse_gpus("2x80GB"), [0, 1], context=1024)


@pytest.fixture(scope="module")
def split_server(tiny_model_dir, gpu_map, tmp_path_factory):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "device": "cpu",
        "max_context_tokens": 1024,
        "default_max_tokens": 16,
    }
    workdir = tmp_path_factory.mktemp("split")
    map_file = workdir / "device_map.json"
    map_file.write_text(json.dumps(dict.fromkeys(gpu_map, "cpu")))
    # `vlmkit serve` loading the model through that device_map (tests/placement/split_server.py).
    server = ServerProcess(
        config, workdir, module="tests.placement.split_server", extra_args=("--device-map", str(map_file))
    ).start()
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.terminate() == 0, server.log()


def test_the_planners_map_of_the_tiny_model_names_every_parameter_and_splits_it(tiny_model_dir, gpu_map):
    model = MllamaForConditionalGeneration.from_pretrained(tiny_model_dir)
    check_device_map(model, gpu_map)  # raises naming any parameter without a device
    assert set(gpu_map) <= dict(model.named_modules()).keys()
    assert gpu_map["model.vision_model"] == 0 and gpu_map["lm_head"] == 1


def test_a_model_loaded_through_the_device_map_answers_image_questions_through_a_real_server(split_server):
    client = openai.OpenAI(base_url=split_server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    first = image_message("What is in the image?")
    answer = client.chat.completions.create(model="tiny-mllama", messages=[first], max_tokens=8, temperature=0)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    text_only = client.chat.completions.create(
        model="tiny-mllama", max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hello?"}]
    )
    assert text_only.usage.completion_tokens > 0


def test_readiness_and_metrics_report_no_gpu_on_the_cpu(split_server):
    ready = httpx.get(split_server.base_url + "/health/ready", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["gpus"] == []
    metrics = httpx.get(split_server.base_url + "/metrics").text
    assert "# TYPE vlmkit_gpu_memory_allocated_bytes gauge" in metrics
    assert not re.search(r"^vlmkit_gpu_memory_\w+\{", metrics, re.MULTILINE), "no GPU, no samples"
