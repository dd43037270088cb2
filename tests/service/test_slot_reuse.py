"""A follow-up that goes through transformers' forward (longer than the prompt graphs take) reads only what its
slot does not hold from the conversation's last turn, and gets what a fresh slot gives: the same answer, and
the same keys and values in the slot."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.backends.base import PreparedPrompt
from inference.backends.slot_contents import SlotContents
from inference.backends.transformers_backend import TransformersBackend
from tests.lab.chat import image_message
from tests.lab.decoding import decode_alone, fixed_greedy, prompt_for

LAKE = Image.new("RGB", (90, 40), (10, 120, 200))
DESERT = Image.new("RGB", (40, 90), (230, 190, 90))
# Long enough that every follow-up prompt passes StaticPrefill's largest bucket (256 tokens).
LONG_QUESTION = " ".join(f"Is boat number {n} on the lake?" for n in range(25))
ANSWER_TOKENS = 20


def backend(tiny_model_dir, slots: int = 1) -> TransformersBackend:
    return TransformersBackend(
        tiny_model_dir, device="cpu", static_cache_tokens=1024, max_batch_size=slots, image_cache_size=4
    )


def ask(model: TransformersBackend, messages: list[dict], image: Image.Image | None) -> tuple[str, int]:
    """The answer in slot 0, and how long the prompt was."""
    prompt = prompt_for(model, messages, image.copy() if image else None)
    return decode_alone(model, prompt, fixed_greedy(ANSWER_TOKENS)), prompt.prompt_tokens


def converse(model: TransformersBackend, first: dict, images: list[Image.Image | None]) -> list[tuple[list, str]]:
    """A question, a long follow-up, and a short one after it (the conversation is long by then), each sent
    with the answers before it, turn n with images[n]: each turn's messages and answer."""
    turns: list[tuple[list, str]] = []
    messages = [first]
    for number, image in enumerate(images):
        if number:
            question = LONG_QUESTION if number == 1 else "Why?"
            messages = messages + [
                {"role": "assistant", "content": turns[-1][1]},
                {"role": "user", "content": question},
            ]
        answer, tokens = ask(model, messages, image)
        assert number == 0 or tokens > 256, "a follow-up short enough for the prompt graphs"
        turns.append((messages, answer))
    return turns


CONVERSATIONS = {
    "image": (image_message("What is in the picture?"), [LAKE, LAKE, LAKE]),
    "text": ({"role": "user", "content": "Tell me about lakes."}, [None, None, None]),
}


@pytest.mark.parametrize("slots", [1, 3])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_follow_ups_read_only_what_their_slot_does_not_hold(tiny_model_dir, conversation, slots):
    first, images = CONVERSATIONS[conversation]
    reusing = backend(tiny_model_dir, slots)
    turns = converse(reusing, first, images)
    # Two follow-ups, each holding at least the turn before's prompt and its answer but one token.
    assert reusing.prompt_work().tokens_reused > 2 * (ANSWER_TOKENS - 1)

    for (messages, answer), image in zip(turns, images, strict=True):
        fresh = backend(tiny_model_dir, slots)
        assert ask(fresh, messages, image)[0] == answer
    # The last turn's prompt, as the slot holds it, against a fresh slot's.
    length = prompt_for(fresh, turns[-1][0], images[-1] and images[-1].copy()).prompt_tokens
    for index in range(len(fresh.decoder.layers)):
        torch.testing.assert_close(reusing.decoder.keys[index][0, :, :length], fresh.decoder.keys[index][0, :, :length])
        torch.testing.assert_close(
            reusing.decoder.values[index][0, :, :length], fresh.decoder.values[index][0, :, :length]
        )


@pytest.mark.parametrize("slots", [1, 3])
@pytest.mark.parametrize("question", [LONG_QUESTION, "Why?"], ids=["read-by-transformers", "read-by-graph"])
def test_the_slot_holds_the_answer_but_its_last_token(tiny_model_dir, slots, question):
    """The chat template trims what it sends back of the tiny model's answers (they begin with a space), so the
    conversations above share only the prompts: here the follow-up's tokens are the answer's own."""
    reusing = backend(tiny_model_dir, slots)
    first = prompt_for(reusing, [{"role": "user", "content": "Tell me about lakes."}])
    request = reusing.begin(first, fixed_greedy(ANSWER_TOKENS), 0, on_text=lambda text: None, should_stop=lambda: False)
    while not request.finished:
        reusing.advance([request])
    answer_ids = request.streamer.token_ids
    assert len(answer_ids) == ANSWER_TOKENS

    ids = first.inputs["input_ids"][0].tolist() + answer_ids + reusing.tokenizer.encode(question)
    follow_up = PreparedPrompt(
        inputs={"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)},
        prompt_tokens=len(ids),
    )
    answer = decode_alone(reusing, follow_up, fixed_greedy(ANSWER_TOKENS))
    assert reusing.prompt_work().tokens_reused == first.prompt_tokens + ANSWER_TOKENS - 1

    fresh = backend(tiny_model_dir, slots)
    assert decode_alone(fresh, follow_up, fixed_greedy(ANSWER_TOKENS)) == answer
    for index in range(len(fresh.decoder.layers)):
        torch.testing.assert_close(
            reusing.decoder.keys[index][0, :, : len(ids)], fresh.decoder.keys[index][0, :, : len(ids)]
        )


def test_a_short_image_follow_up_in_a_batch_is_read_at_once_without_the_encoder(tiny_model_dir):
    first, _ = CONVERSATIONS["image"]
    reusing = backend(tiny_model_dir, slots=3)
    answer, _ = ask(reusing, [first], LAKE)
    follow_up = [first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    prompt = prompt_for(reusing, follow_up, LAKE.copy())
    assert prompt.prompt_tokens <= 256
    request = reusing.begin(
        prompt, fixed_greedy(ANSWER_TOKENS), 0, on_text=lambda text: None, should_stop=lambda: False
    )
    assert request.produced == 1, "its prompt was left for the steps to read"
    while not request.finished:
        reusing.advance([request])
    assert (reusing.prompt_work().images_encoded, reusing.prompt_work().tokens_reused > 0) == (1, True)
    assert ask(backend(tiny_model_dir, slots=3), follow_up, LAKE)[0] == reusing.tokenizer.decode(
        request.streamer.token_ids, skip_special_tokens=True
    )


def test_a_follow_up_with_another_image_reads_its_whole_prompt(tiny_model_dir):
    first, _ = CONVERSATIONS["image"]
    reusing = backend(tiny_model_dir)
    turns = converse(reusing, first, [LAKE, DESERT])
    assert reusing.prompt_work().tokens_reused == 0
    assert ask(backend(tiny_model_dir), turns[-1][0], DESERT)[0] == turns[-1][1]


def test_without_image_digests_image_follow_ups_read_their_whole_prompts(tiny_model_dir):
    first, images = CONVERSATIONS["image"]
    model = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=1024, image_cache_size=0)
    converse(model, first, images)
    assert model.prompt_work().tokens_reused == 0


def test_a_slot_gives_the_tokens_it_shares_with_a_prompt_never_its_last():
    held = SlotContents((1, 2, 3, 4, 5), image_key="lake")
    assert held.reusable([1, 2, 3, 9, 9, 9], "lake") == 3
    assert held.reusable([1, 2, 3, 4, 5, 6, 7], "lake") == 5
    assert held.reusable([1, 2, 3, 4, 5], "lake") == 4, "the last token is read again for its logits"
    assert held.reusable([1, 2, 3, 4, 5, 6], "desert") == 0
    assert held.reusable([1, 2, 3, 4, 5, 6], None) == 0
    assert SlotContents((1, 2), image_key=None).reusable([1, 2, 3], None) == 2


def test_a_follow_up_is_given_the_slot_that_holds_its_conversation(tiny_model_dir):
    model = backend(tiny_model_dir, slots=3)
    lake, desert = image_message("What is in the picture?"), image_message("And this one?")
    answers = {}
    for slot, (question, image) in enumerate([(lake, LAKE), (desert, DESERT)]):
        prompt = prompt_for(model, [question], image.copy())
        answers[slot] = decode_alone(model, prompt, fixed_greedy(ANSWER_TOKENS), slot=slot)

    def follow_up(question: dict, answer: str, image: Image.Image):
        messages = [question, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
        return prompt_for(model, messages, image.copy())

    # Slot 2 holds nothing and was freed last, slot 1 the desert's conversation: the lake's goes back to slot 0.
    assert model.choose_slot(follow_up(lake, answers[0], LAKE), [0, 1, 2]) == 0
    assert model.choose_slot(follow_up(desert, answers[1], DESERT), [0, 1, 2]) == 1
    # A new conversation: a slot holding none rather than one holding another conversation's, which may go on.
    forest = prompt_for(model, [image_message("What is in the picture?")], Image.new("RGB", (60, 60), (20, 90, 30)))
    assert model.choose_slot(forest, [0, 1, 2]) == 2
    assert model.choose_slot(forest, [1, 0]) == 0, "among slots that hold others', the one freed last"
