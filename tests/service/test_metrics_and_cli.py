"""/metrics moves with traffic; the vlmkit ask and chat commands talk to a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from tests.lab.chat import image_message, png_bytes
from tests.lab.server import API_KEY, ServerProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def scrape(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics").text
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(vlmkit_\w+)(\{[^}]*\})? (\S+)$", text, re.MULTILINE):
        outcome = re.search(r'outcome="(\w+)"', labels or "")
        key = f"{name}:{outcome.group(1)}" if outcome else name
        values[key] = values.get(key, 0.0) + float(value)
    return values


def test_metrics_count_requests_tokens_and_latency(server):
    before = scrape(server)
    ok = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers=AUTH,
        timeout=60,
        json={"model": "tiny-mllama", "messages": [image_message("Hi?")], "max_tokens": 5},
    )
    bad = httpx.post(
        server.base_url + "/v1/chat/completions", headers=AUTH, json={"model": "tiny-mllama", "messages": []}
    )
    assert ok.status_code == 200 and bad.status_code == 400
    after = scrape(server)
    usage = ok.json()["usage"]
    assert after["vlmkit_requests_total:ok"] - before.get("vlmkit_requests_total:ok", 0) == 1
    assert after["vlmkit_requests_total:client_error"] - before.get("vlmkit_requests_total:client_error", 0) == 1
    assert after["vlmkit_prompt_tokens_total"] - before.get("vlmkit_prompt_tokens_total", 0) == usage["prompt_tokens"]
    assert (
        after["vlmkit_generation_tokens_total"] - before.get("vlmkit_generation_tokens_total", 0)
        == usage["completion_tokens"]
    )
    assert (
        after["vlmkit_e2e_request_latency_seconds_count"] - before.get("vlmkit_e2e_request_latency_seconds_count", 0)
        == 1
    )
    assert after["vlmkit_time_to_first_token_seconds_count"] > before.get("vlmkit_time_to_first_token_seconds_count", 0)
    assert after["vlmkit_queue_length"] == 0 and after["vlmkit_requests_running"] == 0
    assert after["vlmkit_model_ready"] == 1


def vlmkit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMKIT_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "inference.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_ask_streams_an_answer_about_an_image_file(server, tmp_path):
    image = tmp_path / "dashboard.png"
    image.write_bytes(png_bytes())
    result = vlmkit("ask", str(image), "What's the problem?", "--url", server.base_url + "/v1", "--max-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_ask_reports_a_refused_request_and_exits_1(server, tmp_path):
    image = tmp_path / "not-an-image.png"
    image.write_text("plain text")
    result = vlmkit("ask", str(image), "What?", "--url", server.base_url + "/v1")
    assert result.returncode == 1
    assert "400" in result.stderr and "image" in result.stderr


def test_ask_without_a_server_says_it_cannot_reach_it(tmp_path):
    from tests.lab.server import free_port

    result = vlmkit("ask", "-", "hello", "--url", f"http://127.0.0.1:{free_port()}/v1")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_chat_keeps_a_conversation_with_follow_ups(server, tmp_path):
    image = tmp_path / "fridge.png"
    image.write_bytes(png_bytes())
    result = vlmkit(
        "chat",
        str(image),
        "--url",
        server.base_url + "/v1",
        "--max-tokens",
        "5",
        stdin="What's in the fridge?\nIs there a banana?\n",
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) >= 2
