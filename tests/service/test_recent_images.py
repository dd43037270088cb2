"""Recent images (image_cache_size): a follow-up about the same image skips the processor and the vision encoder,
and gets the answer it gets without them kept."""

from __future__ import annotations

import io
import re

import httpx
import openai
import pytest
import torch
from PIL import Image

from inference.backends.recent_images import RecentlyUsed, image_digest
from inference.backends.transformers_backend import TransformersBackend
from tests.lab.chat import data_uri, image_message
from tests.lab.decoding import decode_alone, fixed_greedy, prompt_for
from tests.lab.server import API_KEY, ServerProcess

LAKE = Image.new("RGB", (90, 40), (10, 120, 200))
DESERT = Image.new("RGB", (40, 90), (230, 190, 90))
# Longer than StaticPrefill's largest bucket (256 tokens): such a prompt goes through transformers' forward.
LONG_ANSWER = " ".join(f"The lake has a boat number {n}." for n in range(25))


def conversation() -> list[tuple[list[dict], Image.Image]]:
    """A question about the lake, a follow-up about it (the image sent again), one about the desert, and a long
    follow-up about the lake."""
    first = image_message("What is in the picture?")
    return [
        ([first], LAKE),
        ([first, {"role": "assistant", "content": "A lake."}, {"role": "user", "content": "What colour is it?"}], LAKE),
        ([image_message("And this one?")], DESERT),
        ([first, {"role": "assistant", "content": LONG_ANSWER}, {"role": "user", "content": "How many boats?"}], LAKE),
    ]


def asked(backend: TransformersBackend) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Each question of the conversation in slot 0: its answer, and its image as the model took it: the pixels
    and, in the static decoder, the image's keys in the first cross-attention layer. (The tiny model's answers
    hardly depend on the image: its cross-attention gates are ~0.03.)"""
    seen = []
    for messages, image in conversation():
        prompt = prompt_for(backend, messages, image.copy())  # a copy: the service decodes every request anew
        answer = decode_alone(backend, prompt, fixed_greedy(12))
        decoder = backend.decoder
        keys = decoder.keys[min(decoder.cross_layers)][0].clone() if decoder is not None else None
        seen.append((answer, prompt.inputs["pixel_values"], keys))
    return seen


@pytest.mark.parametrize(
    "decoder",
    [
        {"static_cache_tokens": 512},
        {"static_cache_tokens": 512, "max_batch_size": 3},
        {"static_cache_tokens": 0},
    ],
    ids=["static-decoder", "batch", "generate"],
)
def test_follow_ups_about_a_kept_image_get_the_answers_of_a_backend_that_keeps_none(tiny_model_dir, decoder):
    keeping = TransformersBackend(tiny_model_dir, device="cpu", image_cache_size=4, **decoder)
    forgetting = TransformersBackend(tiny_model_dir, device="cpu", image_cache_size=0, **decoder)
    assert len(prompt_for(keeping, *conversation()[3]).inputs["input_ids"][0]) > 256, "the long follow-up is not long"

    for (answer, pixels, keys), (expected_answer, expected_pixels, expected_keys) in zip(
        asked(keeping), asked(forgetting), strict=True
    ):
        assert answer == expected_answer
        assert pixels.equal(expected_pixels)
        assert keys is None or keys.equal(expected_keys)
    if decoder["static_cache_tokens"]:
        # The lake once, the desert once. The first follow-up reads from its slot, which holds the lake's
        # keys and values; the long one, after the desert, finds the lake's encoder output among the recent images.
        assert (keeping.prompt_work().images_encoded, keeping.prompt_work().images_reused) == (2, 1)
    else:
        # generate runs the encoder itself: only the processor's work is kept.
        assert (keeping.prompt_work().images_encoded, keeping.prompt_work().images_reused) == (4, 0)
    assert (forgetting.prompt_work().images_encoded, forgetting.prompt_work().images_reused) == (4, 0)


def test_the_processor_runs_once_for_an_image_sent_again(tiny_model_dir):
    backend = TransformersBackend(tiny_model_dir, device="cpu", image_cache_size=2)
    first = prompt_for(backend, [image_message("What is it?")], LAKE.copy())
    again = prompt_for(backend, [image_message("What is it, again?")], LAKE.copy())
    other = prompt_for(backend, [image_message("What is it?")], DESERT.copy())
    assert first.image_key == again.image_key is not None
    assert again.inputs["pixel_values"] is first.inputs["pixel_values"], "the processor ran again"
    assert other.image_key != first.image_key
    assert not other.inputs["pixel_values"].equal(first.inputs["pixel_values"])


def test_the_least_recently_used_image_is_dropped_first():
    recent: RecentlyUsed[str] = RecentlyUsed(2)
    recent.put("lake", "lake states")
    recent.put("desert", "desert states")
    assert recent.get("lake") == "lake states"  # the desert is now the least recently used
    recent.put("forest", "forest states")
    assert recent.get("desert") is None
    assert (recent.get("lake"), recent.get("forest")) == ("lake states", "forest states")
    assert (recent.hits, recent.misses, len(recent)) == (3, 1, 2)


def test_a_capacity_of_zero_keeps_nothing():
    recent: RecentlyUsed[str] = RecentlyUsed(0)
    recent.put("lake", "lake states")
    assert recent.get("lake") is None
    assert len(recent) == 0
    with pytest.raises(ValueError, match="capacity"):
        RecentlyUsed(-1)


def test_images_are_matched_by_their_pixels_and_size():
    png, bmp = io.BytesIO(), io.BytesIO()
    LAKE.save(png, "PNG")
    LAKE.save(bmp, "BMP")
    from_png, from_bmp = Image.open(png).convert("RGB"), Image.open(bmp).convert("RGB")
    assert image_digest(from_png) == image_digest(from_bmp) == image_digest(LAKE)

    one_pixel_off = LAKE.copy()
    one_pixel_off.putpixel((89, 39), (10, 120, 201))
    assert image_digest(one_pixel_off) != image_digest(LAKE)

    # The same bytes in another shape are another image.
    wide, tall = Image.new("RGB", (6, 2), (1, 2, 3)), Image.new("RGB", (2, 6), (1, 2, 3))
    assert wide.tobytes() == tall.tobytes()
    assert image_digest(wide) != image_digest(tall)

    # A palette image's bytes are indices into its palette: not matched at all.
    assert image_digest(LAKE.convert("P")) is None


def test_image_cache_size_must_be_a_count(tmp_path):
    from inference.settings import ConfigError, load_settings

    config = tmp_path / "config.yaml"
    config.write_text("image_cache_size: -1\n")
    with pytest.raises(ConfigError, match="image_cache_size"):
        load_settings(config)


def test_the_server_reuses_an_image_sent_again_and_counts_it(tiny_model_dir, tmp_path):
    server = ServerProcess(
        {
            "model_path": tiny_model_dir,
            "model_name": "tiny",
            "api_key": API_KEY,
            "device": "cpu",
            "static_cache_tokens": 512,
        },
        tmp_path,
    ).start()
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def question(image: Image.Image) -> list[dict]:
        png = io.BytesIO()
        image.save(png, "PNG")
        return [image_message("What is in the picture?", data_uri(png.getvalue()))]

    def ask(messages: list[dict]) -> str:
        completion = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=16, temperature=0, extra_body={"min_tokens": 16}
        )
        return completion.choices[0].message.content

    def counted(name: str) -> int:
        text = httpx.get(server.base_url + "/metrics").text
        return int(float(re.search(rf"^vlmkit_{name}_total\{{[^}}]*\}} (\S+)$", text, re.MULTILINE).group(1)))

    try:
        server.wait_ready()
        about_the_lake = ask(question(LAKE))
        ask(question(DESERT))
        assert (counted("images_encoded"), counted("images_reused")) == (2, 0)
        # The one slot holds the desert now: the lake's follow-up finds its image among the recent ones.
        follow_up = question(LAKE) + [
            {"role": "assistant", "content": about_the_lake},
            {"role": "user", "content": "Why?"},
        ]
        ask(follow_up)
        assert (counted("images_encoded"), counted("images_reused"), counted("prompt_tokens_reused")) == (2, 1, 0)
        # The next turn: the slot holds the conversation so far, the image's keys and values with it.
        ask(follow_up + [{"role": "assistant", "content": "Because."}, {"role": "user", "content": "Sure?"}])
        assert counted("prompt_tokens_reused") > 0
        assert (counted("images_encoded"), counted("images_reused")) == (2, 1)
        assert ask(question(LAKE)) == about_the_lake
    finally:
        assert server.terminate() == 0
