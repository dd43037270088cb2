"""The prompt's text layers written straight into a static decoder's slot (static_prefill.py) give what
transformers' forward gives: the same logits, the same keys and values in the slot, the same answers."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from inference.backends.static_decode import StaticDecoder
from inference.backends.static_prefill import BUCKETS
from inference.backends.transformers_backend import TransformersBackend
from tests.lab.chat import image_message
from tests.lab.decoding import decode_alone, fixed_greedy, prompt_for

IMAGE = Image.new("RGB", (90, 40), (10, 200, 90))
SLOT_TOKENS = 512


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=SLOT_TOKENS, max_batch_size=2)


def decoders(backend: TransformersBackend) -> tuple[StaticDecoder, StaticDecoder]:
    """Today's prefill (every prompt through transformers' forward) and the new one, on the same model."""
    through_transformers = StaticDecoder(backend.model, SLOT_TOKENS, use_cuda_graph=False, slots=2, prompt_buckets=())
    static = StaticDecoder(backend.model, SLOT_TOKENS, use_cuda_graph=False, slots=2)
    return through_transformers, static


def prompt_of_length(backend: TransformersBackend, tokens: int, with_image: bool) -> dict:
    """A chat prompt of exactly `tokens` tokens (" the" is one token), with or without the image."""

    def inputs(words: int) -> dict:
        text = "Say" + " the" * words
        messages = [image_message(text)] if with_image else [{"role": "user", "content": text}]
        return prompt_for(backend, messages, IMAGE if with_image else None).inputs

    shortest = inputs(0)["input_ids"].shape[1]
    prompt = inputs(tokens - shortest)
    assert prompt["input_ids"].shape[1] == tokens
    return prompt


def assert_same_slot(
    expected: StaticDecoder, actual: StaticDecoder, slot: int, tokens: int, with_image: bool, tolerance: float = 1e-5
):
    for index in range(len(expected.layers)):
        if index in expected.cross_layers and not with_image:
            continue
        length = expected.image_tokens if index in expected.cross_layers else tokens
        for name in ("keys", "values"):
            want = getattr(expected, name)[index][slot, :, :length]
            got = getattr(actual, name)[index][slot, :, :length]
            torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance, msg=f"layer {index} {name}")
    torch.testing.assert_close(actual.cross_mask[slot], expected.cross_mask[slot], rtol=0, atol=0)
    torch.testing.assert_close(actual.cross_row[slot], expected.cross_row[slot], rtol=0, atol=0)
    assert int(actual.position[slot]) == int(expected.position[slot]) == tokens


# Either side of bucket boundaries (a text-only prompt has a system turn: 66 tokens at least).
@pytest.mark.parametrize(
    ("with_image", "tokens"),
    [(True, 31), (True, 32), (True, 33), (True, 64), (True, 65), (False, 127), (False, 128), (False, 129)],
)
def test_static_prefill_gives_the_logits_and_caches_of_transformers_forward(backend, with_image, tokens):
    through_transformers, static = decoders(backend)
    inputs = prompt_of_length(backend, tokens, with_image)
    expected = through_transformers.prefill(inputs, slot=1)
    actual = static.prefill(inputs, slot=1)
    assert static.prompt.prefills == 1 and through_transformers.prompt.prefills == 0
    assert actual.shape == expected.shape == (1, backend.model.config.text_config.vocab_size)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert_same_slot(through_transformers, static, 1, tokens, with_image)


def test_prompts_longer_than_the_longest_bucket_go_through_transformers(backend):
    through_transformers, static = decoders(backend)
    tokens = BUCKETS[-1] + 1
    inputs = prompt_of_length(backend, tokens, with_image=True)
    expected = through_transformers.prefill(inputs, slot=0)
    torch.testing.assert_close(static.prefill(inputs, slot=0), expected, rtol=0, atol=0)
    assert static.prompt.prefills == 0
    assert_same_slot(through_transformers, static, 0, tokens, with_image=True)


def test_prefilling_another_slot_leaves_the_first_untouched_and_both_decode_as_alone(backend):
    decoder = backend.decoder
    first = prompt_for(backend, [image_message("Describe the picture.")], IMAGE)
    second = prompt_for(backend, [{"role": "user", "content": "Tell me a story."}])
    alone = [decode_alone(backend, first, fixed_greedy(24), slot=0), decode_alone(backend, second, fixed_greedy(24))]

    prefills = decoder.prompt.prefills
    texts: list[list[str]] = [[], []]
    one = backend.begin(first, fixed_greedy(24), 0, texts[0].append, lambda: False)
    backend.advance([one])  # in a batch, an image request's prompt is read by the next step
    assert decoder.prompt.prefills == prefills + 1
    slot_zero = {name: {i: b[0].clone() for i, b in getattr(decoder, name).items()} for name in ("keys", "values")}
    slot_zero["cross"] = {0: decoder.cross_mask[0].clone(), 1: decoder.cross_row[0].clone()}
    two = backend.begin(second, fixed_greedy(24), 1, texts[1].append, lambda: False)
    for name, buffers in (("keys", decoder.keys), ("values", decoder.values)):
        for index, buffer in buffers.items():
            assert torch.equal(buffer[0], slot_zero[name][index]), f"slot 0's {name} of layer {index} changed"
    assert torch.equal(decoder.cross_mask[0], slot_zero["cross"][0])
    assert torch.equal(decoder.cross_row[0], slot_zero["cross"][1])
    assert decoder.prompt.prefills == prefills + 2

    while not (one.finished and two.finished):
        backend.advance([request for request in (one, two) if not request.finished])
    assert ["".join(pieces) for pieces in texts] == alone


@pytest.mark.parametrize("size", [(50, 50), (100, 50), (150, 50), (100, 100)], ids=str)
def test_the_warm_up_image_covers_the_tiles_a_real_image_covers(backend, size):
    """warm_up plans the vision encoder with blank images: each must give the encoder what a real image of that
    many tiles gives it (shapes, the tile mask)."""
    real = prompt_for(backend, [image_message("Hi")], Image.new("RGB", size, (9, 9, 9))).inputs
    tiles = int(real["aspect_ratio_mask"].sum())
    blank = backend.decoder.prompt._blank_image(tiles)
    for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        assert blank[name].shape == real[name].shape, name
    assert torch.equal(blank["aspect_ratio_mask"], real["aspect_ratio_mask"].to(blank["aspect_ratio_mask"].dtype))
    ratios = backend.model.config.vision_config.supported_aspect_ratios
    high, wide = ratios[int(blank["aspect_ratio_ids"]) - 1]
    assert high * wide == tiles
    encoded = backend.decoder.prompt._encode_image(blank)
    assert encoded.shape == backend.decoder.prompt._encode_image(real).shape


def test_a_capture_that_fails_at_start_sends_every_prompt_through_transformers(backend, caplog):
    """Without a GPU the capture fails, as it might on a GPU or driver that refuses one: the service must serve on."""
    decoder = StaticDecoder(backend.model, SLOT_TOKENS, use_cuda_graph=True, slots=2)
    with caplog.at_level(logging.WARNING, logger="inference.backends.static_prefill"):
        decoder.prompt.warm_up()
    assert "capturing the prompt graphs failed" in caplog.text
    assert decoder.prompt.graphs == 0 and not decoder.prompt.takes(16)
    through_transformers, _ = decoders(backend)
    inputs = prompt_of_length(backend, 40, with_image=True)
    torch.testing.assert_close(decoder.prefill(inputs, slot=1), through_transformers.prefill(inputs, slot=1))
    assert decoder.prompt.prefills == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# A bucket again after another: its graph replays with new inputs.
@pytest.mark.parametrize(("with_image", "lengths"), [(True, (20, 33, 20, 100)), (False, (70, 129, 70, 100))])
def test_graphed_prefill_gives_the_eager_logits_on_cuda(tiny_model_dir, with_image, lengths):
    gpu = TransformersBackend(tiny_model_dir, device="cuda", static_cache_tokens=SLOT_TOKENS, max_batch_size=2)
    assert gpu.decoder.use_cuda_graph
    # every bucket, with and without the image, whole or continued (warm_up)
    captured_at_start = 4 * len(gpu.decoder.prompt.buckets)
    assert gpu.decoder.prompt.graphs == captured_at_start
    eager = StaticDecoder(gpu.model, SLOT_TOKENS, use_cuda_graph=False, slots=2, projections=gpu.projections)
    for tokens in lengths:
        inputs = {name: tensor.cuda() for name, tensor in prompt_of_length(gpu, tokens, with_image).items()}
        if with_image:
            inputs["pixel_values"] = inputs["pixel_values"].to(gpu.vision_dtype)
        graphed = gpu.decoder.prefill(inputs, slot=1)
        torch.testing.assert_close(graphed, eager.prefill(inputs, slot=1), rtol=1e-3, atol=1e-3)
        assert_same_slot(eager, gpu.decoder, 1, tokens, with_image, tolerance=1e-3)
    assert gpu.decoder.prompt.prefills == len(lengths)
    assert gpu.decoder.prompt.graphs == captured_at_start


def first_tokens(inputs: dict, count: int) -> dict:
    """The prompt's first `count` tokens (with its image, when it has one)."""
    per_token = ("input_ids", "attention_mask", "cross_attention_mask")
    return {name: tensor[:, :count] if name in per_token else tensor for name, tensor in inputs.items()}


# (prompt tokens, tokens the slot holds): the rest read by a continued graph, or (past 256) by transformers
CONTINUATIONS = [(100, 81), (300, 280), (300, 20)]


@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize(("tokens", "held"), CONTINUATIONS)
def test_a_prompt_continued_from_what_its_slot_holds_gives_a_whole_prefill(backend, tokens, held, with_image):
    _, whole = decoders(backend)
    _, continued = decoders(backend)
    inputs = prompt_of_length(backend, tokens, with_image)
    expected = whole.prefill(inputs, slot=1)
    continued.prefill(first_tokens(inputs, held), slot=1)
    torch.testing.assert_close(continued.prefill(inputs, slot=1, reuse=held), expected)
    assert_same_slot(whole, continued, 1, tokens, with_image)
    assert continued.position[1] == whole.position[1] == tokens


def test_without_continued_graphs_a_continued_prompt_goes_through_transformers(backend):
    _, whole = decoders(backend)
    _, continued = decoders(backend)
    continued.prompt.continues = False  # as warm_up leaves it when their capture fails
    inputs = prompt_of_length(backend, 100, with_image=True)
    expected = whole.prefill(inputs, slot=1)
    continued.prefill(first_tokens(inputs, 81), slot=1)
    prefills = continued.prompt.prefills
    torch.testing.assert_close(continued.prefill(inputs, slot=1, reuse=81), expected)
    assert continued.prompt.prefills == prefills, "the continued prompt went to StaticPrefill"
    assert_same_slot(whole, continued, 1, 100, with_image=True)


def test_a_continued_prompt_must_leave_a_token_to_read(backend):
    _, decoder = decoders(backend)
    inputs = prompt_of_length(backend, 70, with_image=False)
    for reuse in (70, -1):
        with pytest.raises(ValueError, match="reuse"):
            decoder.prefill(inputs, slot=0, reuse=reuse)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("with_image", [True, False])
def test_continued_graphs_give_a_whole_eager_prefill_on_cuda(tiny_model_dir, with_image):
    gpu = TransformersBackend(tiny_model_dir, device="cuda", static_cache_tokens=SLOT_TOKENS, max_batch_size=2)
    eager = StaticDecoder(gpu.model, SLOT_TOKENS, use_cuda_graph=False, slots=2, projections=gpu.projections)
    graphs = gpu.decoder.prompt.graphs
    for tokens, held in CONTINUATIONS:
        inputs = {name: tensor.cuda() for name, tensor in prompt_of_length(gpu, tokens, with_image).items()}
        if with_image:
            inputs["pixel_values"] = inputs["pixel_values"].to(gpu.vision_dtype)
        expected = eager.prefill(inputs, slot=1)
        gpu.decoder.prefill(first_tokens(inputs, held), slot=1)
        torch.testing.assert_close(gpu.decoder.prefill(inputs, slot=1, reuse=held), expected, rtol=1e-3, atol=1e-3)
        assert_same_slot(eager, gpu.decoder, 1, tokens, with_image, tolerance=1e-3)
    assert gpu.decoder.prompt.graphs == graphs, "a graph was captured after the start"
