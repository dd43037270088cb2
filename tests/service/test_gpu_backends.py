"""The three GPU backend paths on the tiny model: transformers bf16, transformers 4-bit, unsloth 4-bit.

Run on a CUDA machine (`pytest -m gpu`); skipped elsewhere. The whole service suite can also run
against one path with VLMKIT_TEST_BACKEND=transformers-bf16|transformers-4bit|unsloth-4bit.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.lab.chat import data_uri, image_message
from tests.lab.server import API_KEY, BACKENDS, ServerProcess

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(params=["transformers-bf16", "transformers-4bit", "unsloth-4bit"])
def gpu_server(request, tiny_model_dir, tmp_path):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "device": "cuda",
        **BACKENDS[request.param],
    }
    server = ServerProcess(config, tmp_path).start()
    try:
        server.wait_ready(timeout=600)
        yield server
    finally:
        assert server.terminate() == 0, server.log()


def test_backend_path_serves_image_questions_streams_and_follow_ups(gpu_server):
    client = openai.OpenAI(base_url=gpu_server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=600)
    first = image_message("What is in the image?")
    answer = client.chat.completions.create(model="tiny-mllama", messages=[first], max_tokens=12, temperature=0)
    assert answer.choices[0].message.content and "<|" not in answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="tiny-mllama",
        messages=[first],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    follow_up = client.chat.completions.create(
        model="tiny-mllama",
        max_tokens=8,
        temperature=0,
        messages=[
            first,
            {"role": "assistant", "content": answer.choices[0].message.content},
            {"role": "user", "content": "And what colour is it?"},
        ],
    )
    assert follow_up.choices[0].message.content
    refused = httpx.post(
        gpu_server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "tiny-mllama", "messages": [image_message("?", data_uri(b"not an image"))]},
    )
    assert refused.status_code == 400
    sampled = client.chat.completions.create(
        model="tiny-mllama", messages=[first], max_tokens=12, temperature=1.5, extra_body={"min_p": 0.1}, seed=1
    )
    assert sampled.usage.completion_tokens > 0


def test_static_decoder_with_cuda_graphs_matches_generate_in_fp32(tiny_model_dir):
    """In fp32 the graph-replayed decoder must give generate's greedy tokens exactly, image or not."""
    from PIL import Image

    from inference.backends import SamplingParams
    from inference.backends.transformers_backend import TransformersBackend

    plain = TransformersBackend(tiny_model_dir, device="cuda", dtype="float32")
    graphed = TransformersBackend(tiny_model_dir, device="cuda", dtype="float32", static_cache_tokens=512)
    params = SamplingParams(max_new_tokens=48, temperature=0, top_p=1, min_p=0, min_new_tokens=48)
    for content, image in (
        ([{"type": "image"}, {"type": "text", "text": "Describe."}], Image.new("RGB", (90, 40))),
        ([{"type": "text", "text": "A story, please."}], None),
    ):
        answers = []
        for backend in (plain, graphed):
            prompt = backend.prepare([{"role": "user", "content": content}], image)
            pieces: list[str] = []
            backend.generate(prompt, params, pieces.append, lambda: False)
            answers.append("".join(pieces))
        assert answers[0] == answers[1]
