"""How conversations become model inputs: the image stays attached through follow-up turns."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.backends.transformers_backend import TransformersBackend
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import data_uri, image_message, png_bytes


@pytest.fixture(scope="module")
def backend(tiny_model_dir) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir, device="cpu")


def follow_up_messages() -> list[Message]:
    return [
        Message.model_validate(message)
        for message in (
            image_message("What's in the fridge?", data_uri(png_bytes())),
            {"role": "assistant", "content": "Milk and eggs."},
            {"role": "user", "content": "Is there a banana? Where?"},
        )
    ]


def test_follow_up_prompt_keeps_the_image_for_the_later_turns(backend):
    conversation = build_conversation(follow_up_messages())
    prompt = backend.prepare(conversation.messages, Image.new("RGB", (64, 48)))
    ids = prompt.inputs["input_ids"][0].tolist()
    image_token = backend.tokenizer.convert_tokens_to_ids("<|image|>")
    assert ids.count(image_token) == 1
    assert "pixel_values" in prompt.inputs
    # Every token from the image onwards, the follow-up question included, attends to the image's tiles.
    mask = prompt.inputs["cross_attention_mask"][0]  # (tokens, images, tiles)
    image_position = ids.index(image_token)
    assert torch.all(mask[image_position:, 0, 0] == 1)
    assert torch.all(mask[:image_position, 0, 0] == 0)


def test_streamed_text_drops_special_tokens_and_holds_back_half_characters(backend):
    from inference.backends.transformers_backend import _TextStreamer

    tokenizer = backend.tokenizer
    pieces: list[str] = []
    streamer = _TextStreamer(tokenizer, pieces.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, which generate hands over first
    special = [tokenizer.convert_tokens_to_ids(token) for token in ("<|start_header_id|>", "<|image|>", "<|eot_id|>")]
    hello = tokenizer.encode("hello", add_special_tokens=False)
    euro = tokenizer.encode(" €", add_special_tokens=False)  # a 3-byte character, several byte tokens
    for token in [*hello, special[0], special[1], *euro, special[2]]:
        streamer.put(torch.tensor([token]))
    streamer.flush()
    assert "".join(pieces) == "hello €"
    assert all("\ufffd" not in piece for piece in pieces)
