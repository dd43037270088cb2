"""Every bad input gets a 4xx OpenAI-style error, and the very next good request still succeeds."""

from __future__ import annotations

import base64
import io
import os

import httpx
import pytest
from PIL import Image

from tests.lab.chat import data_uri, image_message, png_bytes
from tests.lab.server import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Greedy: whether its answer has any text must not be left to chance (a sampled first token may end the turn).
GOOD = {"model": "tiny-mllama", "messages": [image_message("What is it?")], "max_tokens": 4, "temperature": 0}


def with_image(url: str, question: str = "What is it?") -> dict:
    return {"model": "tiny-mllama", "messages": [image_message(question, url)], "max_tokens": 4}


def truncated_png() -> str:
    return data_uri(png_bytes(256, 256)[:300])


def bomb_png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")  # 25 Mpx, a few kB compressed
    return data_uri(buffer.getvalue())


def tiff_image() -> str:
    return data_uri(png_bytes(fmt="TIFF"), "image/tiff")


JSON_CASES = {
    "missing messages": {"model": "tiny-mllama"},
    "empty messages": {"model": "tiny-mllama", "messages": []},
    "unknown role": {"model": "tiny-mllama", "messages": [{"role": "wizard", "content": "hi"}]},
    "messages not a list": {"model": "tiny-mllama", "messages": "hello"},
    "content of wrong type": {"model": "tiny-mllama", "messages": [{"role": "user", "content": 42}]},
    "unknown content part": {"model": "tiny-mllama", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
    "temperature as text": {**GOOD, "temperature": "hot"},
    "negative temperature": {**GOOD, "temperature": -0.5},
    "temperature over 2": {**GOOD, "temperature": 2.5},
    "top_p zero": {**GOOD, "top_p": 0},
    "min_p over 1": {**GOOD, "min_p": 1.5},
    "max_tokens zero": {**GOOD, "max_tokens": 0},
    "max_tokens over the cap": {**GOOD, "max_tokens": 100_000},
    "two choices": {**GOOD, "n": 2},
    "five stop sequences": {**GOOD, "stop": ["a", "b", "c", "d", "e"]},
    "corrupt image bytes": with_image(data_uri(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)),
    "non-image bytes": with_image(data_uri(b"just some text, not an image")),
    "truncated png": with_image(truncated_png()),
    "unsupported image format": with_image(tiff_image(), "tiff?"),
    "image over the pixel limit": with_image(bomb_png()),
    "data uri that is not base64": with_image("data:image/png;base64,@@@not-base64@@@"),
    "data uri that is not an image": with_image("data:text/plain;base64," + base64.b64encode(b"hi").decode()),
    "two images": {
        "model": "tiny-mllama",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
                    {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
                    {"type": "text", "text": "compare"},
                ],
            }
        ],
    },
    "image in a second message": {
        "model": "tiny-mllama",
        "messages": [image_message("first"), {"role": "assistant", "content": "ok"}, image_message("second")],
    },
    "system message with an image": {
        "model": "tiny-mllama",
        "messages": [{"role": "system", "content": "Be brief."}, image_message("What is it?")],
    },
    "only an assistant message": {"model": "tiny-mllama", "messages": [{"role": "assistant", "content": "hi"}]},
    "prompt longer than the context": {
        "model": "tiny-mllama",
        "messages": [{"role": "user", "content": "word " * 3000}],
    },
    "huge prompt rejected before tokenizing": {
        "model": "tiny-mllama",
        "messages": [{"role": "user", "content": "x" * 900_000}],
    },
    "max_tokens past the context": {
        "model": "tiny-mllama",
        "max_tokens": 512,
        "messages": [{"role": "user", "content": "word " * 700}],
    },
    "file url outside the image folder": with_image("file:///etc/passwd"),
    "ftp url": with_image("ftp://example.com/cat.png"),
    "gopher url": with_image("gopher://example.com/cat.png"),
    "url without scheme": with_image("cat.png"),
    "http loopback": with_image("http://127.0.0.1/cat.png"),
    "http loopback short form": with_image("http://127.1/cat.png"),
    "http loopback as a number": with_image("http://2130706433/cat.png"),
    "http loopback in hex": with_image("http://0x7f000001/cat.png"),
    "http ipv6 loopback": with_image("http://[::1]/cat.png"),
    "http localhost name": with_image("http://localhost:8000/cat.png"),
    "http private address": with_image("http://10.1.2.3/cat.png"),
    "http private 192.168": with_image("https://192.168.0.10/cat.png"),
    "http link-local metadata": with_image("http://169.254.169.254/latest/meta-data"),
    "http ipv4-mapped loopback": with_image("http://[::ffff:127.0.0.1]/cat.png"),
    "seed over int64": {**GOOD, "seed": 2**70},
    "seed under int64": {**GOOD, "seed": -(2**70)},
    "file url with a NUL byte": with_image("file:///tmp/red%00.png"),
    "http url with a broken IPv6 host": with_image("http://[::1/cat.png"),
    "http url with a port out of range": with_image("http://example.com:99999/cat.png"),
}

# Over the server's limits on a request's shape (settings max_messages, max_content_parts, max_stop_*).
OVER_LIMITS = {
    "too_many_messages": {
        "model": "tiny-mllama",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}] * 513,
    },
    "too_many_content_parts": {
        "model": "tiny-mllama",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 65}],
    },
    "too_many_stop_sequences": {**GOOD, "stop": ["a", "b", "c", "d", "e"]},
    "stop_sequence_too_long": {**GOOD, "stop": ["x" * 257]},
}

# Unsupported parameters that would change the answer's meaning: a 400 that names them.
UNSUPPORTED = {
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "required",
    "functions": [{"name": "f", "parameters": {}}],
    "logprobs": True,
    "top_logprobs": 3,
    "logit_bias": {"50": 10},
    "n": 2,
    "frequency_penalty": 0.5,
    "presence_penalty": -1,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
}

# Reserved IPv6 forms that carry a private IPv4 address: refused before any connection.
EMBEDDED_PRIVATE_IPV6 = [
    "http://[64:ff9b::7f00:1]/cat.png",
    "http://[2002:7f00:1::1]/cat.png",
    "http://[::7f00:1]/cat.png",
    "http://[fec0::1]/cat.png",
    "http://[::ffff:a00:1]/cat.png",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
]


def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict:
    assert 400 <= response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert "code" in error
    return error


def assert_next_good_request_succeeds(server) -> None:
    response = httpx.post(server.base_url + "/v1/chat/completions", json=GOOD, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body", JSON_CASES.values(), ids=JSON_CASES.keys())
def test_bad_request_gets_a_400_and_the_server_keeps_serving(server, body):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert_openai_error(response, 400)
    assert_next_good_request_succeeds(server)


RAW_CASES = {
    "invalid json": (b'{"model": "tiny-mllama", "messages": [', 400),
    "json that is not an object": (b'["a", "list"]', 400),
    "NaN temperature": (
        b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
    ),
    "Infinity top_p": (
        b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
        400,
    ),
    "body over the size limit": (b'{"model": "tiny-mllama", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
    "lone surrogate in the text": (
        b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        400,
    ),
    "lone surrogate in a text part": (
        b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        400,
    ),
    "lone surrogate in the model": (b'{"model": "tiny-\\ud800", "messages": [{"role": "user", "content": "hi"}]}', 400),
    "lone surrogate in a stop sequence": (
        b'{"model": "tiny-mllama", "stop": ["\\ud800"], "messages": [{"role": "user", "content": "hi"}]}',
        400,
    ),
    "invalid UTF-8 bytes": (b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi \xff\xfe"}]}', 400),
}


@pytest.mark.parametrize(("raw", "status"), RAW_CASES.values(), ids=RAW_CASES.keys())
def test_malformed_body_gets_an_error_and_the_server_keeps_serving(server, raw, status):
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=raw,
        timeout=60,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_openai_error(response, status)
    assert_next_good_request_succeeds(server)


@pytest.mark.parametrize("code", OVER_LIMITS)
def test_request_over_a_shape_limit_is_a_400_before_any_work(server, code):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=OVER_LIMITS[code], headers=AUTH, timeout=60)
    assert assert_openai_error(response, 400)["code"] == code
    assert_next_good_request_succeeds(server)


@pytest.mark.parametrize("param", UNSUPPORTED, ids=UNSUPPORTED.keys())
def test_unsupported_parameter_that_changes_the_answer_is_a_400_naming_it(server, param):
    response = httpx.post(
        server.base_url + "/v1/chat/completions", json={**GOOD, param: UNSUPPORTED[param]}, headers=AUTH, timeout=60
    )
    error = assert_openai_error(response, 400)
    assert error["param"] == param and param in error["message"]
    assert error["code"] == "unsupported_parameter"
    assert_next_good_request_succeeds(server)


@pytest.mark.parametrize("url", EMBEDDED_PRIVATE_IPV6)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused_before_connecting(server, url):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=with_image(url), headers=AUTH, timeout=60)
    assert assert_openai_error(response, 400)["code"] == "forbidden_image_url"
    assert_next_good_request_succeeds(server)


def test_file_url_naming_a_directory_is_a_400(server, image_dir):
    response = httpx.post(
        server.base_url + "/v1/chat/completions", json=with_image(image_dir.as_uri()), headers=AUTH, timeout=60
    )
    assert_openai_error(response, 400)
    assert_next_good_request_succeeds(server)


def test_file_url_naming_a_fifo_is_a_400_without_waiting_for_a_writer(server, image_dir):
    fifo = image_dir / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    response = httpx.post(
        server.base_url + "/v1/chat/completions", json=with_image(fifo.as_uri()), headers=AUTH, timeout=60
    )
    assert_openai_error(response, 400)
    assert_next_good_request_succeeds(server)


def test_oversized_chunked_body_is_refused_while_reading(server):
    def chunks():
        yield b'{"model": "tiny-mllama", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=chunks(),
        timeout=60,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_openai_error(response, 413)
    assert_next_good_request_succeeds(server)


def test_unknown_model_is_a_404(server):
    response = httpx.post(server.base_url + "/v1/chat/completions", json={**GOOD, "model": "gpt-4o"}, headers=AUTH)
    assert assert_openai_error(response, 404)["code"] == "model_not_found"
    assert_next_good_request_succeeds(server)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic dGVzdDp0ZXN0"}],
    ids=["missing", "wrong", "no scheme", "basic auth"],
)
def test_missing_or_wrong_api_key_is_a_401(server, headers):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=GOOD, headers=headers)
    assert assert_openai_error(response, 401)["type"] == "authentication_error"
    assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 401
    assert_next_good_request_succeeds(server)


def test_unknown_path_and_wrong_method_get_openai_errors(server):
    assert_openai_error(httpx.get(server.base_url + "/v1/nothing-here", headers=AUTH), 404)
    assert_openai_error(httpx.get(server.base_url + "/v1/chat/completions", headers=AUTH), 405)
