"""Start-up, readiness, back-pressure, cancellation and shutdown of a real server process."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.lab.chat import image_message
from tests.lab.server import API_KEY, ServerProcess, backend_config, free_port
from tests.lab.waiting import wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def long_request(tokens: int) -> dict:
    return {
        "model": "tiny-mllama",
        "messages": [image_message("Talk.")],
        "stream": True,
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 1.0,
    }


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics").text
    values = [float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    return sum(values)


def start_server(tiny_model_dir, tmp_path, **overrides) -> ServerProcess:
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "max_context_tokens": 4096,
        "max_tokens_cap": 4000,
        **backend_config(),
        **overrides,
    }
    return ServerProcess(config, tmp_path).start()


class Streamer(threading.Thread):
    """A streaming request in the background: records the status, the first chunk, and how it ended."""

    def __init__(self, server: ServerProcess, body: dict, stop_after_first: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.server, self.body, self.stop_after_first = server, body, stop_after_first
        self.status: int | None = None
        self.first_chunk = threading.Event()
        self.lines: list[str] = []

    def run(self) -> None:
        with (
            httpx.Client(timeout=120) as http,
            http.stream(
                "POST", self.server.base_url + "/v1/chat/completions", json=self.body, headers=AUTH
            ) as response,
        ):
            self.status = response.status_code
            for line in response.iter_lines():
                if line:
                    self.lines.append(line)
                    self.first_chunk.set()
                    if self.stop_after_first is not None and self.stop_after_first.is_set():
                        return  # leaving the with-block closes the connection mid-stream


@pytest.fixture
def busy_server(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, max_queue=1)
    server.wait_ready()
    yield server
    server.terminate()


def test_readiness_is_503_while_loading_then_200(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path)
    try:
        server.wait_live()
        seen = []

        def ready_and_refusing_until_then() -> bool:
            response = httpx.get(server.base_url + "/health/ready", timeout=60)
            seen.append(response.status_code)
            if response.status_code == 200:
                return True
            assert response.json()["status"] == "loading"
            early = httpx.post(
                server.base_url + "/v1/chat/completions",
                headers=AUTH,
                timeout=60,
                json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}]},
            )
            if httpx.get(server.base_url + "/health/ready", timeout=60).status_code == 503:
                assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
                assert "retry-after" in early.headers
            return False

        wait_until(ready_and_refusing_until_then, 120, "/health/ready to answer 200", interval=0)
        assert seen[0] == 503, "the first readiness answer came after the model had loaded"
        assert seen[-1] == 200
        assert metric(server, "vlmkit_model_ready") == 1
    finally:
        assert server.terminate() == 0


def test_full_queue_answers_429_with_retry_after(busy_server):
    stop = threading.Event()
    running = Streamer(busy_server, long_request(3000), stop)
    running.start()
    assert running.first_chunk.wait(60)
    waiting = Streamer(busy_server, long_request(3000), stop)
    waiting.start()
    wait_until(lambda: metric(busy_server, "vlmkit_queue_length") == 1, 30, "the second request waits in the queue")
    refused = httpx.post(
        busy_server.base_url + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    stop.set()
    running.join(60)
    waiting.join(60)
    wait_until(
        lambda: metric(busy_server, "vlmkit_requests_running") == 0 and metric(busy_server, "vlmkit_queue_length") == 0,
        60,
        "the server is idle again",
    )
    assert (
        httpx.post(
            busy_server.base_url + "/v1/chat/completions",
            headers=AUTH,
            timeout=60,
            json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ).status_code
        == 200
    )


def test_client_disconnect_stops_its_generation(busy_server):
    tokens_before = metric(busy_server, "vlmkit_generation_tokens_total")
    stop = threading.Event()
    stop.set()
    streamer = Streamer(busy_server, long_request(4000), stop)
    streamer.start()
    streamer.join(60)
    assert streamer.status == 200 and streamer.lines
    wait_until(
        lambda: metric(busy_server, "vlmkit_generations_cancelled_total") >= 1,
        30,
        "the abandoned generation is cancelled",
    )
    generated = metric(busy_server, "vlmkit_generation_tokens_total") - tokens_before
    assert generated < 4000, "the generation ran to the end although the client was gone"


def test_non_streaming_client_disconnect_stops_its_generation(busy_server):
    body = {**long_request(4000), "stream": False}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(busy_server.base_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=1.5)
    wait_until(
        lambda: metric(busy_server, "vlmkit_generations_cancelled_total") >= 1,
        30,
        "the abandoned generation is cancelled",
    )
    assert metric(busy_server, "vlmkit_requests_running") == 0


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, drain_timeout_s=60)
    server.wait_ready()
    streamer = Streamer(server, long_request(150))
    streamer.start()
    assert streamer.first_chunk.wait(60)
    assert server.terminate(timeout=90) == 0
    streamer.join(10)
    assert streamer.lines[-1] == "data: [DONE]", "the request in flight was cut off by the shutdown"


def test_sigterm_cancels_work_that_outlasts_the_drain_timeout(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, drain_timeout_s=1)
    server.wait_ready()
    streamer = Streamer(server, long_request(4000))
    streamer.start()
    assert streamer.first_chunk.wait(60)
    started = time.monotonic()
    assert server.terminate(timeout=60) == 0
    assert time.monotonic() - started < 30
    streamer.join(10)
    assert not streamer.is_alive()


def run_serve(config_text: str, tmp_path, env: dict | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    import os

    return subprocess.run(
        [sys.executable, "-m", "inference.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_invalid_config_stops_start_up_naming_the_field(tmp_path):
    result = run_serve("port: not-a-port\n", tmp_path)
    assert result.returncode == 2
    assert "port" in result.stderr


def test_unknown_config_field_is_refused(tmp_path):
    result = run_serve("modle_path: /srv/model\n", tmp_path)
    assert result.returncode == 2
    assert "modle_path" in result.stderr


def test_public_bind_without_api_key_refuses_to_start(tmp_path):
    result = run_serve("host: 0.0.0.0\n", tmp_path)
    assert result.returncode == 2
    assert "api_key" in result.stderr and "VLMKIT_API_KEY" in result.stderr


def test_environment_overrides_the_config_file(tmp_path):
    result = run_serve("port: 8123\n", tmp_path, env={"VLMKIT_PORT": "99999"})
    assert result.returncode == 2
    assert "port" in result.stderr


def test_model_that_cannot_load_exits_1_with_the_reason(tmp_path):
    port = free_port()
    result = run_serve(f"model_path: {tmp_path / 'missing'}\nport: {port}\n", tmp_path)
    assert result.returncode == 1
    assert "could not be loaded" in result.stderr


def test_a_client_that_gives_up_while_waiting_frees_its_place_at_once(busy_server):
    stop = threading.Event()
    running = Streamer(busy_server, long_request(3000), stop)
    running.start()
    assert running.first_chunk.wait(60)
    wait_until(lambda: metric(busy_server, "vlmkit_requests_running") == 1, 30, "the first request runs")
    gives_up = threading.Event()
    gives_up.set()
    leaving = Streamer(busy_server, long_request(3000), gives_up)  # leaves after its first chunk, while it waits
    leaving.start()
    leaving.join(60)
    assert leaving.status == 200 and not leaving.is_alive()
    wait_until(
        lambda: metric(busy_server, "vlmkit_queue_length") == 0,
        30,
        "the place of the client that left is free while the first request still runs",
    )
    assert metric(busy_server, "vlmkit_requests_running") == 1
    next_one = Streamer(busy_server, long_request(3000), stop)
    next_one.start()
    assert next_one.first_chunk.wait(60)
    assert next_one.status == 200, "the next client was refused although a place was free"
    stop.set()
    running.join(60)
    next_one.join(60)


@pytest.mark.parametrize("drain", [0, 0.5])
def test_sigterm_with_a_drain_timeout_of_0_or_a_fraction_cancels_the_work_in_flight(tiny_model_dir, tmp_path, drain):
    server = start_server(tiny_model_dir, tmp_path, drain_timeout_s=drain)
    server.wait_ready()
    streamer = Streamer(server, long_request(4000))
    streamer.start()
    assert streamer.first_chunk.wait(60)
    assert server.terminate(timeout=120) == 0
    streamer.join(30)
    assert not streamer.is_alive()
    assert '"finish_reason": "length"' not in "\n".join(streamer.lines), (
        "the request in flight ran to its end: the drain timeout was not applied"
    )


def test_a_request_past_the_wall_clock_limit_gets_504_and_the_server_keeps_serving(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, request_timeout_s=3)
    try:
        server.wait_ready()
        endless = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers=AUTH,
            timeout=120,
            json={**long_request(4000), "stream": False},
        )
        assert endless.status_code == 504, endless.text
        assert endless.json()["error"]["code"] == "request_timeout"
        assert "3 s" in endless.json()["error"]["message"]
        wait_until(lambda: metric(server, "vlmkit_requests_running") == 0, 30, "the timed-out generation stops")
        short = httpx.post(
            server.base_url + "/v1/chat/completions",
            headers=AUTH,
            timeout=120,
            json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        )
        assert short.status_code == 200, short.text
    finally:
        assert server.terminate() == 0


def start_faulty_server(tiny_model_dir, tmp_path, fault: str, env: dict | None = None, **overrides) -> ServerProcess:
    """A real server whose model fails as `fault` says (tests/service/faulty_model.py)."""
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        **backend_config(),
        **overrides,
    }
    return ServerProcess(
        config, tmp_path, env={"VLMKIT_TEST_FAULT": fault, **(env or {})}, module="tests.service.faulty_model"
    ).start()


def ask_briefly(server: ServerProcess, **fields) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions",
        headers=AUTH,
        timeout=120,
        json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields},
    )


def readiness(server: ServerProcess) -> tuple[int, str]:
    response = httpx.get(server.base_url + "/health/ready", timeout=30)
    return response.status_code, response.json()["status"]


def test_an_accelerator_failure_fails_the_request_and_ends_the_process_with_exit_3(tiny_model_dir, tmp_path):
    server = start_faulty_server(tiny_model_dir, tmp_path, "device-error")
    try:
        server.wait_ready()
        response = ask_briefly(server)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "device_failed"
        assert server.process.wait(60) == 3, "the process kept running on a failed accelerator"
        assert "accelerator failed" in server.log()
    finally:
        server.terminate()


def test_readiness_reports_failing_after_failures_in_a_row_and_requests_still_get_answers(tiny_model_dir, tmp_path):
    server = start_faulty_server(tiny_model_dir, tmp_path, "error", max_consecutive_failures=2)
    try:
        server.wait_ready()
        first = ask_briefly(server)
        assert first.status_code == 500 and first.json()["error"]["code"] == "generation_failed"
        assert readiness(server) == (200, "ready")
        assert ask_briefly(server).status_code == 500
        assert readiness(server) == (503, "failing")
        assert ask_briefly(server).status_code == 500, "a failing server should still take requests"
    finally:
        assert server.terminate() == 0


def test_readiness_reports_stuck_while_a_generation_makes_no_progress(tiny_model_dir, tmp_path):
    server = start_faulty_server(tiny_model_dir, tmp_path, "hang", stuck_after_s=1, drain_timeout_s=0)
    try:
        server.wait_ready()
        hung = Streamer(server, long_request(10))
        hung.start()
        assert hung.first_chunk.wait(60)
        wait_until(lambda: readiness(server) == (503, "stuck"), 60, "readiness reports the engine stuck")
        assert httpx.get(server.base_url + "/health/live", timeout=30).status_code == 200
    finally:
        assert server.terminate() == 0


def test_requests_past_the_preparation_bound_get_429_at_once_and_health_still_answers(tiny_model_dir, tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    server = start_faulty_server(
        tiny_model_dir,
        tmp_path,
        "hold-prepare",
        env={"VLMKIT_TEST_HOLD": str(hold)},
        prepare_workers=1,
        max_preparing=1,
    )
    try:
        server.wait_ready()
        held = []
        first = threading.Thread(target=lambda: held.append(ask_briefly(server)), daemon=True)
        first.start()
        wait_until((tmp_path / "hold.entered").exists, 60, "the first request is being prepared")
        refused = ask_briefly(server)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "preparation_full" and "retry-after" in refused.headers
        assert httpx.get(server.base_url + "/health/live", timeout=30).status_code == 200
        hold.unlink()
        first.join(120)
        assert held[0].status_code == 200, held[0].text
        assert ask_briefly(server).status_code == 200
    finally:
        hold.unlink(missing_ok=True)
        assert server.terminate() == 0
