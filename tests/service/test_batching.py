"""Continuous batching in the static decoder: requests decoded together give the answers they get alone."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest
import torch
from PIL import Image

from inference.backends.transformers_backend import TransformersBackend
from tests.lab.chat import data_uri, image_message, png_bytes
from tests.lab.decoding import decode_alone, fixed_greedy, prompt_for
from tests.lab.server import API_KEY, ServerProcess

REQUESTS = [
    ([image_message("Describe the picture.")], Image.new("RGB", (90, 40), (10, 200, 90)), 30),
    ([{"role": "user", "content": "Tell me a story."}], None, 22),
    ([image_message("What colour?")], Image.new("RGB", (40, 120), (250, 20, 20)), 26),
]


def test_requests_decoded_together_match_their_single_answers(tiny_model_dir):
    single = TransformersBackend(tiny_model_dir, device="cpu")
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=4)
    expected = []
    for messages, image, tokens in REQUESTS:
        pieces: list[str] = []
        single.generate(prompt_for(single, messages, image), fixed_greedy(tokens), pieces.append, lambda: False)
        expected.append("".join(pieces))

    texts: list[list[str]] = [[] for _ in REQUESTS]
    running = []
    # The first request starts alone; the others join it after two steps, in other slots.
    for index, (messages, image, tokens) in enumerate(REQUESTS):
        request = batched.begin(
            prompt_for(batched, messages, image),
            fixed_greedy(tokens),
            slot=3 - index,
            on_text=texts[index].append,
            should_stop=lambda: False,
        )
        running.append(request)
        if index == 0:
            batched.advance(running)
            batched.advance(running)
    while any(request.result is None for request in running):
        batched.advance([request for request in running if request.result is None])
    assert ["".join(pieces) for pieces in texts] == expected
    assert [request.result.completion_tokens for request in running] == [tokens for *_, tokens in REQUESTS]


def test_batching_needs_the_static_decoder(tmp_path):
    from inference.settings import ConfigError, load_settings

    config = tmp_path / "config.yaml"
    config.write_text("static_cache_tokens: 0\nmax_batch_size: 4\n")
    with pytest.raises(ConfigError, match="max_batch_size"):
        load_settings(config)


def test_static_cache_tokens_takes_auto_or_a_count(tmp_path):
    from inference.settings import ConfigError, load_settings

    config = tmp_path / "config.yaml"
    for bad in ("-1", "lots"):
        config.write_text(f"static_cache_tokens: {bad}\n")
        with pytest.raises(ConfigError, match="static_cache_tokens"):
            load_settings(config)


def test_server_decodes_concurrent_requests_together_with_unchanged_answers(tiny_model_dir, tmp_path):
    server = ServerProcess(
        {
            "model_path": tiny_model_dir,
            "model_name": "tiny",
            "api_key": API_KEY,
            "device": "cpu",
            "static_cache_tokens": 512,
            "max_batch_size": 4,
            "image_cache_size": 0,  # the images asked again together go through the encoder among the steps
        },
        tmp_path,
    ).start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bodies = [
        {
            "model": "tiny",
            "max_tokens": 60,
            "min_tokens": 60,
            "temperature": 0,
            "messages": [image_message(f"Question {i}", data_uri(png_bytes(color=(40 * i, 90, 200))))],
        }
        for i in range(4)
    ]

    def ask(body: dict) -> str:
        response = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    try:
        server.wait_ready()
        alone = [ask(body) for body in bodies]
        peak, done = [0], threading.Event()

        def watch() -> None:
            while not done.is_set():
                text = httpx.get(server.base_url + "/metrics").text
                line = next(line for line in text.splitlines() if line.startswith("vlmkit_requests_running{"))
                peak[0] = max(peak[0], int(float(line.split()[-1])))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(ask, bodies))
        done.set()
        watcher.join(5)
        assert together == alone
        assert peak[0] >= 2, "the requests never decoded at the same time"
    finally:
        assert server.terminate() == 0


def test_static_cache_tokens_auto_batches_on_the_cpu_and_otherwise_leaves_cpu_decoding_to_generate(tiny_model_dir):
    from inference.settings import Settings

    assert Settings(model_path=tiny_model_dir).static_cache_tokens == "auto"
    alone = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens="auto")
    assert alone.decoder is None  # the CPU gains nothing from CUDA graphs
    batching = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens="auto", max_batch_size=3)
    assert batching.decoder is not None and batching.slots == 3
    assert batching.decoder.max_tokens == min(2048, batching.context_length)


def test_one_requests_own_error_in_a_batch_ends_only_that_request(tiny_model_dir):
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=2)
    (messages, image, tokens), (other_messages, other_image, other_tokens) = REQUESTS[0], REQUESTS[1]
    alone = decode_alone(batched, prompt_for(batched, other_messages, other_image), fixed_greedy(other_tokens), slot=1)

    begun = False

    def broken_client(text: str) -> None:
        if begun:  # from the first token advance gives it on (an image prompt in a batch is read there)
            raise UnicodeError("this request's text cannot be delivered")

    failing = batched.begin(
        prompt_for(batched, messages, image),
        fixed_greedy(tokens),
        slot=0,
        on_text=broken_client,
        should_stop=lambda: False,
    )
    begun = True
    texts: list[str] = []
    healthy = batched.begin(
        prompt_for(batched, other_messages, other_image),
        fixed_greedy(other_tokens),
        slot=1,
        on_text=texts.append,
        should_stop=lambda: False,
    )
    running = [failing, healthy]
    while any(not r.finished for r in running):
        batched.advance([r for r in running if not r.finished])
    assert isinstance(failing.error, UnicodeError) and failing.result is None
    assert healthy.error is None and healthy.result.completion_tokens == other_tokens
    assert "".join(texts) == alone


def begin_quietly(backend: TransformersBackend, index: int, slot: int, texts: list[str], stop=lambda: False):
    """Begin REQUESTS[index] in `slot`, its text going to `texts`."""
    messages, image, tokens = REQUESTS[index]
    return backend.begin(prompt_for(backend, messages, image), fixed_greedy(tokens), slot, texts.append, stop)


def test_an_image_request_joining_a_batch_is_read_while_the_others_go_on_decoding(tiny_model_dir):
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=2)
    expected = [decode_alone(batched, prompt_for(batched, m, i), fixed_greedy(t)) for m, i, t in REQUESTS[:2]]
    story: list[str] = []
    decoding = begin_quietly(batched, 1, slot=0, texts=story)  # text only: read at once
    batched.advance([decoding])
    prefills, produced = batched.decoder.prompt.prefills, decoding.produced

    picture: list[str] = []
    joining = begin_quietly(batched, 0, slot=1, texts=picture)
    assert joining.produced == 0 and batched.decoder.prompt.prefills == prefills  # nobody waited for its prompt
    batched.advance([decoding, joining])  # a step for the other; then the image goes through the encoder
    assert decoding.produced == produced + 1
    assert joining.produced == 0 and not picture and batched.decoder.prompt.prefills == prefills
    batched.advance([decoding, joining])  # its text layers and first token; then a step for both
    assert decoding.produced == produced + 2
    assert joining.produced == 1 and batched.decoder.prompt.prefills == prefills + 1
    while not (decoding.finished and joining.finished):
        batched.advance([request for request in (decoding, joining) if not request.finished])
    assert ["".join(picture), "".join(story)] == expected


def test_a_request_stopped_while_its_image_waits_ends_with_nothing_read(tiny_model_dir):
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=2)
    story: list[str] = []
    decoding = begin_quietly(batched, 1, slot=0, texts=story)
    stopped = threading.Event()
    picture: list[str] = []
    joining = begin_quietly(batched, 0, slot=1, texts=picture, stop=stopped.is_set)
    prefills = batched.decoder.prompt.prefills
    stopped.set()
    batched.advance([decoding, joining])
    batched.advance([decoding, joining])
    assert joining.result.completion_tokens == 0 and joining.result.finish_reason == "stop" and not picture
    assert batched.decoder.prompt.prefills == prefills
    while not decoding.finished:
        batched.advance([decoding])
    assert decoding.result.completion_tokens == REQUESTS[1][2]


def test_an_image_the_vision_encoder_fails_on_ends_only_that_request(tiny_model_dir):
    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=256, max_batch_size=2)
    messages, image, tokens = REQUESTS[0]
    expected = decode_alone(batched, prompt_for(batched, *REQUESTS[1][:2]), fixed_greedy(REQUESTS[1][2]))
    story: list[str] = []
    decoding = begin_quietly(batched, 1, slot=0, texts=story)
    broken = prompt_for(batched, messages, image)
    broken.inputs["pixel_values"] = broken.inputs["pixel_values"][:, :, :, :2]  # two colour channels of three
    failing = batched.begin(broken, fixed_greedy(tokens), 1, lambda text: None, lambda: False)
    running = [decoding, failing]
    while not all(request.finished for request in running):
        batched.advance([request for request in running if not request.finished])
    assert isinstance(failing.error, RuntimeError) and failing.result is None
    assert "".join(story) == expected and decoding.result.completion_tokens == REQUESTS[1][2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_images_encoded_on_their_own_stream_give_the_answers_of_images_encoded_between_steps(tiny_model_dir):
    answers = []
    for overlap in (False, True):
        backend = TransformersBackend(
            tiny_model_dir, device="cuda", static_cache_tokens=256, max_batch_size=3, overlap_image_encoding=overlap
        )
        assert (backend.decoder.prompt.encoder_stream is not None) == overlap
        texts: list[list[str]] = [[] for _ in REQUESTS]
        running = [begin_quietly(backend, 1, slot=0, texts=texts[1])]
        backend.advance(running)
        running += [begin_quietly(backend, index, slot, texts=texts[index]) for index, slot in ((0, 1), (2, 2))]
        while not all(request.finished for request in running):
            backend.advance([request for request in running if not request.finished])
        assert all(request.error is None for request in running)
        answers.append(["".join(pieces) for pieces in texts])
    assert answers[0] == answers[1]


def test_a_batch_slot_refuses_a_request_it_cannot_hold(tiny_model_dir):
    from inference.backends import PromptError

    batched = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=64, max_batch_size=2)
    assert batched.context_length == 64
    prompt = prompt_for(batched, [{"role": "user", "content": "Hi"}], None)
    with pytest.raises(PromptError, match="64"):
        batched.begin(
            prompt,
            fixed_greedy(64 - prompt.prompt_tokens + 1),
            slot=0,
            on_text=lambda text: None,
            should_stop=lambda: False,
        )


def test_batching_server_refuses_at_admission_what_a_slot_cannot_hold(tiny_model_dir, tmp_path):
    server = ServerProcess(
        {
            "model_path": tiny_model_dir,
            "model_name": "tiny",
            "api_key": API_KEY,
            "device": "cpu",
            "max_context_tokens": 1024,
            "static_cache_tokens": 96,
            "max_batch_size": 2,
            "default_max_tokens": 512,
            "max_tokens_cap": 1000,
        },
        tmp_path,
    ).start()
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def ask(messages: list[dict], **fields) -> httpx.Response:
        return httpx.post(
            server.base_url + "/v1/chat/completions",
            headers=headers,
            timeout=120,
            json={"model": "tiny", "messages": messages, "temperature": 0, **fields},
        )

    try:
        server.wait_ready()
        too_long_answer = ask([{"role": "user", "content": "Hi"}], max_tokens=200)
        assert too_long_answer.status_code == 400, too_long_answer.text
        error = too_long_answer.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
        assert "96" in error["message"]
        too_long_prompt = ask([{"role": "user", "content": "word " * 150}], max_tokens=2)
        assert too_long_prompt.status_code == 400, too_long_prompt.text
        assert too_long_prompt.json()["error"]["code"] == "context_length_exceeded"
        fitting = ask([{"role": "user", "content": "Hi"}], min_tokens=90)  # no max_tokens: what the slot holds
        assert fitting.status_code == 200, fitting.text
        usage = fitting.json()["usage"]
        assert usage["total_tokens"] <= 96
    finally:
        assert server.terminate() == 0
