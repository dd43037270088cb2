"""bitsandbytes 4-bit on the CPU: the language model quantized, the vision side kept, answers served."""

from __future__ import annotations

import openai
import pytest

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import image_message
from tests.lab.server import API_KEY, ServerProcess


@pytest.fixture(scope="module")
def backend_4bit(tiny_model_dir) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir, device="cpu", load_in_4bit=True)


def linear_weights(backend: TransformersBackend) -> dict[str, str]:
    import torch

    return {
        name: type(module.weight).__name__
        for name, module in backend.model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def test_4bit_quantizes_the_language_model_and_keeps_vision_and_lm_head(backend_4bit):
    weights = linear_weights(backend_4bit)
    language = {name: kind for name, kind in weights.items() if name.startswith("model.language_model.")}
    kept = {
        name: kind
        for name, kind in weights.items()
        if name.startswith(("model.vision_model.", "model.multi_modal_projector")) or name == "lm_head"
    }
    assert language and all(kind == "Params4bit" for kind in language.values())
    assert kept and all(kind != "Params4bit" for kind in kept.values())


def test_4bit_backend_generates_text_for_an_image_question(backend_4bit):
    from PIL import Image

    conversation = build_conversation([Message.model_validate(image_message("What is it?"))])
    prompt = backend_4bit.prepare(conversation.messages, Image.new("RGB", (64, 48), (0, 90, 200)))
    pieces: list[str] = []
    result = backend_4bit.generate(
        prompt, SamplingParams(max_new_tokens=8, temperature=0, top_p=1, min_p=0), pieces.append, lambda: False
    )
    assert result.completion_tokens > 0 and "".join(pieces)


def test_4bit_server_answers_the_openai_client(tiny_model_dir, tmp_path):
    server = ServerProcess(
        {
            "model_path": tiny_model_dir,
            "model_name": "tiny-4bit",
            "api_key": API_KEY,
            "load_in_4bit": True,
            "device": "cpu",
        },
        tmp_path,
    ).start()
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
        completion = client.chat.completions.create(
            model="tiny-4bit", messages=[image_message("What?")], max_tokens=6, temperature=0
        )
        assert completion.choices[0].message.content
        assert completion.usage.completion_tokens > 0
    finally:
        assert server.terminate() == 0
