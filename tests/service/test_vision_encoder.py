"""The vision encoder without its padding mask gives transformers' output and the same answers (fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.mllama.modeling_mllama import MllamaCrossAttentionDecoderLayer

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.backends.vision_encoder import ForwardWithoutPaddingMask, forward_without_padding_mask
from inference.conversation import build_conversation
from inference.protocol import Message
from tests.lab.chat import image_message

GREEDY = SamplingParams(max_new_tokens=30, temperature=0, top_p=1, min_p=0, min_new_tokens=30)
# The tiny model's tiles are 56 pixels square; the processor gives these sizes 1, 2, 3 and 4 tiles.
IMAGE_SIZES = {1: (56, 56), 2: (112, 50), 3: (40, 150), 4: (112, 112)}


def noise_image(size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    """The backend as the service builds it, and one given back transformers' own vision forward."""
    new, reference = (
        TransformersBackend(tiny_model_dir, device="cpu"),
        TransformersBackend(tiny_model_dir, device="cpu"),
    )
    for backend in (new, reference):
        assert isinstance(backend.model.model.vision_model.forward, ForwardWithoutPaddingMask)
    vision = reference.model.model.vision_model
    vision.forward = vision.forward.hf_forward
    for backend in (new, reference):
        open_cross_attention_gates(backend)
    return new, reference


def open_cross_attention_gates(backend: TransformersBackend) -> None:
    """tanh(1) = 0.76: the tiny model's random gates (~0.03) let the image barely move its answers."""
    with torch.no_grad():
        for layer in backend.model.model.language_model.layers:
            if isinstance(layer, MllamaCrossAttentionDecoderLayer):
                layer.cross_attn_attn_gate.fill_(1.0)
                layer.cross_attn_mlp_gate.fill_(1.0)


def vision_inputs(backend: TransformersBackend, tiles: int) -> dict[str, torch.Tensor]:
    inputs = backend.processor(images=noise_image(IMAGE_SIZES[tiles]), text="<|image|>", return_tensors="pt")
    assert inputs["aspect_ratio_mask"].sum() == tiles
    return {name: inputs[name] for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}


@pytest.mark.parametrize("tiles", sorted(IMAGE_SIZES))
def test_encoder_output_equals_transformers_on_every_token(backends, tiles):
    new, _ = backends
    vision = new.model.model.vision_model
    inputs = vision_inputs(new, tiles)
    with torch.inference_mode():
        expected = vision.forward.hf_forward(**inputs).last_hidden_state
        actual = forward_without_padding_mask(vision, **inputs).last_hidden_state
    # The uncovered tiles too: their tokens are computed as in transformers, not filled in.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def answer(backend: TransformersBackend, image: Image.Image) -> tuple[str, int]:
    conversation = build_conversation([Message.model_validate(image_message("Describe the picture."))])
    prompt = backend.prepare(conversation.messages, image)
    pieces: list[str] = []
    result = backend.generate(prompt, GREEDY, pieces.append, lambda: False)
    return "".join(pieces), result.completion_tokens


@pytest.mark.parametrize("tiles", sorted(IMAGE_SIZES))
def test_greedy_answers_equal_those_with_the_transformers_encoder(backends, tiles):
    new, reference = backends
    image = noise_image(IMAGE_SIZES[tiles])
    expected = answer(reference, image)
    assert answer(new, image) == expected
    assert expected[1] == GREEDY.max_new_tokens


def test_images_covering_no_tile_go_to_the_transformers_forward(backends):
    new, _ = backends
    vision = new.model.model.vision_model
    inputs = vision_inputs(new, 2)
    inputs["aspect_ratio_mask"] = torch.zeros_like(inputs["aspect_ratio_mask"])
    with torch.inference_mode():
        torch.testing.assert_close(
            vision(**inputs).last_hidden_state, vision.forward.hf_forward(**inputs).last_hidden_state
        )
