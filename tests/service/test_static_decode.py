"""The static-cache decoder produces exactly the tokens transformers' generate produces (greedy)."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import image_message

GREEDY = SamplingParams(max_new_tokens=40, temperature=0, top_p=1, min_p=0, min_new_tokens=40)


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    return (
        TransformersBackend(tiny_model_dir, device="cpu"),
        TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=512),
    )


def answer(backend: TransformersBackend, messages: list[dict], image, params: SamplingParams) -> tuple[str, int]:
    conversation = build_conversation([Message.model_validate(message) for message in messages])
    prompt = backend.prepare(conversation.messages, image)
    pieces: list[str] = []
    result = backend.generate(prompt, params, pieces.append, lambda: False)
    return "".join(pieces), result.completion_tokens


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_static_decoder_matches_generate_token_for_token(backends, with_image):
    plain, static = backends
    assert static.decoder is not None and plain.decoder is None
    if with_image:
        messages, image = [image_message("Describe the picture.")], Image.new("RGB", (90, 40), (10, 200, 90))
    else:
        messages, image = [{"role": "user", "content": "Tell me a story."}], None
    expected = answer(plain, messages, image, GREEDY)
    prefills = static.decoder.prompt.prefills
    assert answer(static, messages, image, GREEDY) == expected
    assert expected[1] == 40
    assert static.decoder.prompt.prefills == prefills + 1  # the prompt went through static_prefill.py


def test_static_decoder_stops_at_the_token_limit_and_end_of_turn(backends):
    _, static = backends
    text, tokens = answer(
        static,
        [image_message("Hi")],
        Image.new("RGB", (56, 56)),
        SamplingParams(max_new_tokens=5, temperature=0, top_p=1, min_p=0),
    )
    assert 1 <= tokens <= 5


def test_static_decoder_falls_back_to_generate_past_its_buffer(tiny_model_dir):
    small = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=64)
    plain = TransformersBackend(tiny_model_dir, device="cpu")
    messages = [{"role": "user", "content": "word " * 40}]
    params = SamplingParams(max_new_tokens=30, temperature=0, top_p=1, min_p=0, min_new_tokens=30)
    assert answer(small, messages, None, params) == answer(plain, messages, None, params)


def test_sampling_with_a_seed_is_repeatable(backends):
    _, static = backends
    params = SamplingParams(max_new_tokens=20, temperature=1.5, top_p=0.9, min_p=0.1, seed=11)
    first = answer(static, [image_message("Go")], Image.new("RGB", (56, 56)), params)
    assert answer(static, [image_message("Go")], Image.new("RGB", (56, 56)), params) == first


def test_a_steps_tokens_arrive_at_the_next_advance_while_the_step_after_is_queued(backends):
    """advance queues a step and delivers the one before it, so the host's work overlaps the device's; the last
    token's step is the last one queued (none is wasted at the token limit)."""
    _, static = backends
    conversation = build_conversation([Message.model_validate({"role": "user", "content": "Count."})])
    prompt = static.prepare(conversation.messages, None)
    params = SamplingParams(max_new_tokens=6, temperature=0, top_p=1, min_p=0, min_new_tokens=6)
    request = static.begin(prompt, params, 0, lambda text: None, lambda: False)
    position = int(static.decoder.position[0])
    assert request.produced == 1 and position == prompt.prompt_tokens
    static.advance([request])
    assert request.produced == 1 and int(static.decoder.position[0]) == position + 1  # queued, not delivered
    static.advance([request])
    assert request.produced == 2 and int(static.decoder.position[0]) == position + 2
    while not request.finished:
        static.advance([request])
    assert request.result.completion_tokens == 6 and int(static.decoder.position[0]) == position + 5


def test_a_request_stopped_with_a_step_queued_leaves_its_slot_to_the_next_as_if_new(backends):
    _, static = backends
    messages, image = [image_message("Describe the picture.")], Image.new("RGB", (90, 40), (10, 200, 90))
    expected = answer(static, messages, image, GREEDY)
    conversation = build_conversation([Message.model_validate({"role": "user", "content": "Tell me a story."})])
    prompt = static.prepare(conversation.messages, None)
    tokens = itertools.count(1)  # should_stop is asked once a token
    stopped = static.begin(prompt, GREEDY, 0, lambda text: None, lambda: next(tokens) >= 3)
    while not stopped.finished:
        static.advance([stopped])
    assert stopped.result.completion_tokens == 3 and stopped.in_flight == 1  # its next step was already queued
    assert answer(static, messages, image, GREEDY) == expected
