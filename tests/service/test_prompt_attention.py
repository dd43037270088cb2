"""The prompt's text layers attend without cuDNN (a plan per new prompt length); the vision encoder keeps it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.backends import SamplingParams
from inference.backends.prompt_attention import attend_without_cudnn
from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import image_message

ONE_TOKEN = SamplingParams(max_new_tokens=1, temperature=0, top_p=1, min_p=0)


@pytest.mark.parametrize("static_cache_tokens", [0, 256], ids=["transformers-forward", "static-prefill"])
def test_language_model_reads_the_prompt_without_cudnn_and_the_vision_encoder_with_it(
    tiny_model_dir, static_cache_tokens
):
    backend = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=static_cache_tokens)
    model = backend.model.model
    attend_without_cudnn(model.language_model)  # what the backend does on CUDA
    seen: dict[str, list[bool]] = {"vision": [], "text": []}

    def record(name):
        return lambda module, args: seen[name].append(torch.backends.cuda.cudnn_sdp_enabled())

    model.vision_model.transformer.layers[0].self_attn.q_proj.register_forward_pre_hook(record("vision"))
    # down_proj: the static prefill multiplies q/k/v (and gate/up) stacked, but never stacks down_proj
    model.language_model.layers[0].mlp.down_proj.register_forward_pre_hook(record("text"))
    conversation = build_conversation([Message.model_validate(image_message("What is this?"))])
    prompt = backend.prepare(conversation.messages, Image.new("RGB", (60, 40), (200, 10, 10)))

    assert torch.backends.cuda.cudnn_sdp_enabled()
    backend.generate(prompt, ONE_TOKEN, lambda text: None, lambda: False)

    assert seen == {"vision": [True], "text": [False]}
    assert torch.backends.cuda.cudnn_sdp_enabled(), "the flag is restored after the prompt"
