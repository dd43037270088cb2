"""One model spread over two GPUs, through a real `vlmkit serve`: each placement answers, and readiness
and /metrics report the memory of each GPU the model is on.

Run on a machine with two or more CUDA GPUs: `python -m pytest -m gpu tests/placement -q`; skipped elsewhere.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.lab.chat import image_message
from tests.lab.server import API_KEY, ServerProcess

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]

PLACEMENTS = {
    "planner": {"placement": "planner"},
    "auto": {"placement": "auto"},
    "max_memory": {"placement": "max_memory", "max_memory": {0: "2MiB", 1: "1GiB"}},  # the tiny model is ~1 MiB
}


@pytest.fixture(params=list(PLACEMENTS))
def split_server(request, tiny_model_dir, tmp_path):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "device": "cuda",
        "dtype": "bfloat16",
        "max_context_tokens": 1024,
        "gpus": [0, 1],
        **PLACEMENTS[request.param],
    }
    server = ServerProcess(config, tmp_path).start()
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        assert server.terminate() == 0, server.log()


def test_a_model_spread_over_two_gpus_answers_and_reports_each_gpus_memory(split_server):
    client = openai.OpenAI(base_url=split_server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=600)
    answer = client.chat.completions.create(
        model="tiny-mllama", messages=[image_message("What is in the image?")], max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    streamed = client.chat.completions.create(
        model="tiny-mllama",
        messages=[image_message("What is in the image?")],
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    assert (
        "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        == answer.choices[0].message.content
    )

    gpus = httpx.get(split_server.base_url + "/health/ready", headers={"Authorization": f"Bearer {API_KEY}"}).json()[
        "gpus"
    ]
    assert gpus and all(gpu["memory_allocated_bytes"] > 0 and gpu["memory_total_bytes"] > 0 for gpu in gpus)
    metrics = httpx.get(split_server.base_url + "/metrics").text
    for gpu in gpus:
        assert re.search(rf'^vlmkit_gpu_memory_allocated_bytes\{{[^}}]*gpu="{gpu["index"]}"', metrics, re.MULTILINE)
    # accelerate 1.15's balanced map splits even the tiny model (vision encoder on GPU 0, the rest on GPU 1)
    assert [gpu["index"] for gpu in gpus] == [0, 1], "the model is on both GPUs"
    assert "the model is spread over devices" in split_server.log()
