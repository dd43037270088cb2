"""The backend's text streamer: token by token, its deltas add up to the whole answer's text."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from inference.backends.transformers_backend import _TextStreamer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def stream(tokenizer, token_ids: list[int]) -> list[str]:
    deltas: list[str] = []
    streamer = _TextStreamer(tokenizer, deltas.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and is not part of the answer
    for token in token_ids:
        streamer.put(torch.tensor([token]))
    streamer.flush()
    return deltas


@pytest.mark.parametrize(
    "text",
    [
        "Plain words, then numbers 12345 and punctuation!?",
        "Multi-byte characters split over tokens: naïve café, 東京, emoji 🙂🚀 and é̃ combining marks.",
        "   leading spaces\n\nnew lines\tand tabs   ",
    ],
)
def test_deltas_join_to_the_decoded_answer(tokenizer, text):
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = stream(tokenizer, token_ids)
    assert "".join(deltas) == tokenizer.decode(token_ids, skip_special_tokens=True) == text
    assert all("\ufffd" not in delta for delta in deltas), "half characters were sent"
    assert len(deltas) > 1, "text is streamed as it comes, not at the end"


def test_random_token_sequences_stream_their_decoded_text(tokenizer):
    """Random ids include lone byte tokens (half characters) and special tokens (never sent)."""
    generator = random.Random(7)
    for _ in range(20):
        token_ids = [generator.randrange(len(tokenizer)) for _ in range(60)]
        assert "".join(stream(tokenizer, token_ids)) == tokenizer.decode(token_ids, skip_special_tokens=True)
