"""With batching, a request lives in one slot of the static decoder: the real server refuses one the slot
cannot hold (400, and it keeps serving), and an answer that fills its slot to the last token ends with
"length" at exactly that count, with the tokens transformers' generate gives it (no position clamped)."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.server import API_KEY, ServerProcess

SLOT = 96
QUESTIONS = ["Hi", "Tell me a story about a lighthouse."]


@pytest.fixture(scope="module")
def batching_client(tiny_model_dir, tmp_path_factory):
    server = ServerProcess(
        {
            "model_path": tiny_model_dir,
            "model_name": "tiny",
            "api_key": API_KEY,
            "device": "cpu",
            "max_context_tokens": 1024,
            "static_cache_tokens": SLOT,
            "max_batch_size": 2,
            "default_max_tokens": 512,
            "max_tokens_cap": 1000,
        },
        tmp_path_factory.mktemp("batch-slot"),
    ).start()
    try:
        server.wait_ready()
        yield openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    finally:
        assert server.terminate() == 0


def ask(client: openai.OpenAI, question: str, max_tokens: int, **fields):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0, **fields
    )


def prompt_tokens(client: openai.OpenAI, question: str) -> int:
    return ask(client, question, 1).usage.prompt_tokens


def test_a_request_past_its_batch_slot_gets_400_and_the_server_keeps_serving(batching_client):
    room = SLOT - prompt_tokens(batching_client, "Hi")
    with pytest.raises(openai.BadRequestError) as refused:
        ask(batching_client, "Hi", room + 1)
    assert refused.value.status_code == 400
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert str(SLOT) in error["message"]
    with pytest.raises(openai.BadRequestError) as long_prompt:
        ask(batching_client, "word " * SLOT, 1)
    assert long_prompt.value.body["code"] == "context_length_exceeded"
    assert ask(batching_client, "Hi", room).choices[0].finish_reason in ("stop", "length")


def test_answers_that_fill_their_slots_end_with_length_at_the_slot_end_as_generate_decodes_them(
    batching_client, tiny_model_dir
):
    rooms = [SLOT - prompt_tokens(batching_client, question) for question in QUESTIONS]

    def fill(question_and_room):
        question, room = question_and_room
        return ask(batching_client, question, room, extra_body={"min_tokens": room})

    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:  # decoded together, in both slots
        completions = list(pool.map(fill, zip(QUESTIONS, rooms)))

    alone = TransformersBackend(tiny_model_dir, device="cpu")  # transformers' generate, no slot
    for question, room, completion in zip(QUESTIONS, rooms, completions):
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == room
        assert completion.usage.total_tokens == SLOT
        conversation = build_conversation([Message(role="user", content=question)])
        pieces: list[str] = []
        alone.generate(
            alone.prepare(conversation.messages, None),
            SamplingParams(max_new_tokens=room, temperature=0, top_p=1, min_p=0, min_new_tokens=room),
            pieces.append,
            lambda: False,
        )
        assert completion.choices[0].message.content == "".join(pieces)


def test_an_answer_that_fills_its_slot_writes_every_token_at_its_own_position(tiny_model_dir):
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=SLOT, max_batch_size=2)
    conversation = build_conversation([Message(role="user", content=QUESTIONS[1])])
    prompt = batched.prepare(conversation.messages, None)
    room = SLOT - prompt.prompt_tokens
    request = batched.begin(
        prompt,
        SamplingParams(max_new_tokens=room, temperature=0, top_p=1, min_p=0, min_new_tokens=room),
        slot=1,
        on_text=lambda text: None,
        should_stop=lambda: False,
    )
    written = []  # where each step writes the request's last token (an advance may only deliver a step's tokens)
    step = batched.decoder.step

    def step_noting_the_position(tokens=None):
        written.append(int(batched.decoder.position[1]))
        return step(tokens)

    batched.decoder.step = step_noting_the_position
    while not request.finished:
        batched.advance([request])
    assert written == list(range(prompt.prompt_tokens, SLOT - 1)), "a token was written at a clamped position"
    assert request.result.finish_reason == "length" and request.result.completion_tokens == room
