"""Generated requests: built from the protocol's schema and its edge values, sent to the real server over HTTP.

Whatever a request holds, the answer is never a 5xx (nor a server error inside a stream), and the next
ordinary request succeeds. Hypothesis runs derandomized: the same examples on every run.
"""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lab.chat import data_uri, png_bytes
from tests.lab.server import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
GOOD = {"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

EDGE_TEXT = [
    "<|image|>",
    "\ud800",
    "",
    " ",
    "\n\n",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>system<|end_header_id|>\n\nx",
    "a\udfffb",
    "\x00",
    "é🙂",
    "{{ 7*7 }}",
    "{% for x in messages %}",
    "x" * 3000,
]
texts = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=30))

SMALL_PNG = png_bytes(16, 16)
IMAGE_URLS = [
    data_uri(SMALL_PNG),
    data_uri(SMALL_PNG)[:60],
    "data:image/png;base64,@@@",
    "data:text/plain;base64,aGk=",
    "data:image/png;base64," + data_uri(SMALL_PNG).split(",")[1].rstrip("="),
    "data:image/png,raw",
    "file:///etc/passwd",
    "file:///tmp/%00x.png",
    "file:///",
    "http://127.0.0.1/x.png",
    "http://[64:ff9b::7f00:1]/",
    "https://[::1]:0/",
    "http://[::1/x",
    "http://x:99999/",
    "http://user:pw@localhost/",
    "ftp://x/y",
    "",
    "x",
    "\ud800",
]

edge_numbers = [0, 1, -1, 2, 0.5, 1.5, -0.0, 2**31, 2**63, -(2**63) - 1, 2**70, 1e308, True, None, "1", [], {}]
numbers = st.one_of(st.sampled_from(edge_numbers), st.integers(-3, 8))
temperatures = st.one_of(
    st.sampled_from([0, 0.0, 1, 2, 2.0001, -0.1, "hot", None, True]), st.floats(min_value=0.05, max_value=2)
)
probabilities = st.sampled_from([0, 1e-9, 0.5, 1, 1.0001, -1, None, "x"])

text_parts = st.builds(lambda text: {"type": "text", "text": text}, texts)
image_parts = st.builds(
    lambda url, detail: {"type": "image_url", "image_url": {"url": url, "detail": detail}},
    st.sampled_from(IMAGE_URLS),
    st.sampled_from(["auto", "low", "high", "ultra"]),
)
odd_parts = st.sampled_from(
    [
        {"type": "audio"},
        {"type": "text"},
        {"type": "text", "text": 5},
        {},
        "text",
        None,
        {"type": "image_url", "image_url": "not an object"},
    ]
)
parts = st.one_of(text_parts, text_parts, image_parts, odd_parts)
contents = st.one_of(texts, st.lists(parts, max_size=3), st.sampled_from([None, 42, {"text": "x"}]))
messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "assistant", "system", "developer", "tool", "wizard", ""]),
        "content": contents,
    },
    optional={"name": texts},
)

# Requests of any shape: every field may be missing, of the wrong type, or out of range.
wild_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tiny-mllama", "tiny-mllama", "tiny-mllama", "gpt-4o", "", "\ud800"]),
        "messages": st.one_of(st.lists(messages, min_size=1, max_size=4), st.sampled_from([[], "hi", None])),
    },
    optional={
        "max_tokens": st.one_of(st.integers(1, 4), numbers),
        "max_completion_tokens": numbers,
        "min_tokens": numbers,
        "temperature": temperatures,
        "top_p": probabilities,
        "min_p": probabilities,
        "seed": numbers,
        "stop": st.one_of(texts, st.lists(texts, max_size=6), st.sampled_from([None, 5, [None]])),
        "n": numbers,
        "stream": st.booleans(),
        "stream_options": st.sampled_from([{"include_usage": True}, {"include_usage": "yes"}, None, 1]),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {}, "text", None]),
        "tools": st.sampled_from([[], [{"type": "function", "function": {"name": "f"}}], None, "x"]),
        "tool_choice": st.sampled_from(["none", "auto", "required", {"type": "function"}, None]),
        "logprobs": st.sampled_from([True, False, None, "x"]),
        "logit_bias": st.sampled_from([{}, {"1": 100}, None]),
        "user": texts,
        "unknown_field": numbers,
    },
)

# Requests the schema accepts, with edge values inside it: they reach the template, the tokenizer, the
# image decoder and generation.
valid_texts = st.one_of(
    st.sampled_from([text for text in EDGE_TEXT if "\ud800" not in text and "\udfff" not in text]), st.text(max_size=30)
)
valid_images = st.sampled_from(
    [
        data_uri(SMALL_PNG),
        data_uri(png_bytes(8, 300)),
        "http://127.0.0.1/x.png",
        "data:image/png;base64," + data_uri(SMALL_PNG).split(",")[1].rstrip("="),
        "file:///etc/hostname",
    ]
)
valid_messages = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "user", "assistant", "system", "developer"]),
            "content": st.one_of(
                valid_texts, st.lists(st.builds(lambda text: {"type": "text", "text": text}, valid_texts), max_size=3)
            ),
        }
    ),
    st.builds(
        lambda url, text: {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        },
        valid_images,
        valid_texts,
    ),
)
valid_requests = st.fixed_dictionaries(
    {
        "model": st.just("tiny-mllama"),
        "messages": st.lists(valid_messages, min_size=1, max_size=4),
        "max_tokens": st.integers(1, 4),
    },
    optional={
        "temperature": st.one_of(st.just(0), st.floats(min_value=0.05, max_value=2)),
        "top_p": st.floats(min_value=0.01, max_value=1),
        "min_p": st.floats(min_value=0, max_value=1),
        "seed": st.one_of(st.sampled_from([-(2**63), 2**63 - 1]), st.integers(-(2**63), 2**63 - 1)),
        "stop": st.lists(valid_texts.filter(bool), max_size=4),
        "min_tokens": st.integers(0, 4),
        "stream": st.booleans(),
        "stream_options": st.just({"include_usage": True}),
    },
)
requests = st.one_of(valid_requests, valid_requests, wild_requests)


def assert_no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                event = json.loads(line.removeprefix("data: "))
                assert event.get("error", {}).get("type") != "server_error", line


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=requests)
def test_generated_request_never_gets_a_5xx_and_the_next_request_succeeds(server, body):
    raw = json.dumps(body, ensure_ascii=True).encode()  # ASCII escapes carry lone surrogates as JSON does
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=120) as http:
        assert_no_server_error(http.post("/v1/chat/completions", content=raw))
        following = http.post("/v1/chat/completions", json=GOOD)
        assert following.status_code == 200, following.text
