"""Every bad input gets a 4xx OpenAI-style error, and the very next good request still succeeds."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.service.conftest import API_KEY, data_uri, image_message, png_bytes

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GOOD = {"model": "tiny-mllama", "messages": [image_message("What is it?")], "max_tokens": 4}


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
    "two images": {"model": "tiny-mllama", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
                                     {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
                                     {"type": "text", "text": "compare"}]}]},
    "image in a second message": {"model": "tiny-mllama", "messages": [
        image_message("first"), {"role": "assistant", "content": "ok"}, image_message("second")]},
    "system message with an image": {"model": "tiny-mllama", "messages": [
        {"role": "system", "content": "Be brief."}, image_message("What is it?")]},
    "only an assistant message": {"model": "tiny-mllama", "messages": [{"role": "assistant", "content": "hi"}]},
    "prompt longer than the context": {"model": "tiny-mllama", "messages": [
        {"role": "user", "content": "word " * 3000}]},
    "huge prompt rejected before tokenizing": {"model": "tiny-mllama", "messages": [
        {"role": "user", "content": "x" * 900_000}]},
    "max_tokens past the context": {"model": "tiny-mllama", "max_tokens": 512, "messages": [
        {"role": "user", "content": "word " * 700}]},
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
}


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
    "NaN temperature": (b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], '
                        b'"temperature": NaN}', 400),
    "Infinity top_p": (b'{"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], '
                       b'"top_p": Infinity}', 400),
    "body over the size limit": (b'{"model": "tiny-mllama", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
}


@pytest.mark.parametrize(("raw", "status"), RAW_CASES.values(), ids=RAW_CASES.keys())
def test_malformed_body_gets_an_error_and_the_server_keeps_serving(server, raw, status):
    response = httpx.post(server.base_url + "/v1/chat/completions", content=raw, timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(response, status)
    assert_next_good_request_succeeds(server)


def test_oversized_chunked_body_is_refused_while_reading(server):
    def chunks():
        yield b'{"model": "tiny-mllama", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(server.base_url + "/v1/chat/completions", content=chunks(), timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(response, 413)
    assert_next_good_request_succeeds(server)


def test_unknown_model_is_a_404(server):
    response = httpx.post(server.base_url + "/v1/chat/completions", json={**GOOD, "model": "gpt-4o"}, headers=AUTH)
    assert assert_openai_error(response, 404)["code"] == "model_not_found"
    assert_next_good_request_succeeds(server)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": "Basic dGVzdDp0ZXN0"}],
                         ids=["missing", "wrong", "no scheme", "basic auth"])
def test_missing_or_wrong_api_key_is_a_401(server, headers):
    response = httpx.post(server.base_url + "/v1/chat/completions", json=GOOD, headers=headers)
    assert assert_openai_error(response, 401)["type"] == "authentication_error"
    assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 401
    assert_next_good_request_succeeds(server)


def test_unknown_path_and_wrong_method_get_openai_errors(server):
    assert_openai_error(httpx.get(server.base_url + "/v1/nothing-here", headers=AUTH), 404)
    assert_openai_error(httpx.get(server.base_url + "/v1/chat/completions", headers=AUTH), 405)
