"""Sampling edge cases on the real tiny model: tiny temperatures, broken distributions, seeds."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.backends import SamplingError, SamplingParams
from inference.backends.static_decode import sample
from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import image_message

PATHS = {"generate": {}, "static-decoder": {"static_cache_tokens": 256}}


def params(temperature: float, seed: int | None = None, tokens: int = 12) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=tokens, temperature=temperature, top_p=0.9, min_p=0.05, seed=seed, min_new_tokens=tokens
    )


def answer(backend: TransformersBackend, sampling: SamplingParams) -> str:
    conversation = build_conversation([Message.model_validate(image_message("What is it?"))])
    prompt = backend.prepare(conversation.messages, Image.new("RGB", (56, 56), (30, 60, 200)))
    pieces: list[str] = []
    backend.generate(prompt, sampling, pieces.append, lambda: False)
    return "".join(pieces)


@pytest.fixture(scope="module", params=list(PATHS), ids=list(PATHS))
def backend(request, tiny_model_dir):
    return TransformersBackend(tiny_model_dir, device="cpu", **PATHS[request.param])


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 5e-5])
def test_a_temperature_too_small_to_divide_by_decodes_greedily(backend, temperature):
    assert answer(backend, params(temperature)) == answer(backend, params(0))


def test_a_seed_leaves_every_other_request_s_randomness_alone(backend):
    before = torch.get_rng_state()
    first = answer(backend, params(1.2, seed=7))
    assert torch.equal(torch.get_rng_state(), before), "the seed reseeded torch's global generator"
    assert answer(backend, params(1.2, seed=7)) == first


@pytest.mark.parametrize("path", list(PATHS))
def test_a_model_whose_logits_turn_nan_fails_the_request_before_multinomial(tiny_model_dir, path):
    broken = TransformersBackend(tiny_model_dir, device="cpu", **PATHS[path])
    with torch.no_grad():
        broken.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(SamplingError):
        answer(broken, params(1.0))


def test_sample_checks_the_distribution_before_multinomial():
    for bad in (float("nan"), float("inf")):
        logits = torch.zeros(1, 32)
        logits[0, 3] = bad
        with pytest.raises(SamplingError):
            sample(logits, 1.0, 1.0, 0.0)
    assert sample(torch.tensor([[0.0, 5.0, 1.0]]), 1e-300, 1.0, 0.0) == 1


def test_the_server_answers_a_tiny_temperature_as_greedy(client):
    def ask(temperature: float) -> str:
        completion = client.chat.completions.create(
            model="tiny-mllama",
            messages=[image_message("What is it?")],
            temperature=temperature,
            max_tokens=10,
            extra_body={"min_tokens": 10},
        )
        return completion.choices[0].message.content

    assert ask(1e-300) == ask(0)
