"""Who may call the service: the key before the body, loopback names only on a keyless server, and health
that tells strangers no more than a balancer needs."""

from __future__ import annotations

import httpx
import pytest

from tests.lab.server import API_KEY, backend_config, running_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def keyless_server(tiny_model_dir, tmp_path_factory):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "max_context_tokens": 1024,
        "default_max_tokens": 8,
        **backend_config(),
    }
    with running_server(config, tmp_path_factory.mktemp("keyless")) as process:
        yield process


@pytest.mark.parametrize(
    "body",
    [b'{"model": "tiny-mllama", "messages": [', b"not json at all", b"[]"],
    ids=["truncated json", "not json", "json list"],
)
def test_keyless_client_gets_a_401_whatever_its_body(server, body):
    response = httpx.post(
        server.base_url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


def test_keyless_client_with_an_oversized_body_gets_a_401_not_a_413(server):
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=b"x" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401, response.text


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8000", "192.168.1.20", "127.0.0.1.evil.example", "localhost.evil.example", ""],
)
def test_keyless_server_refuses_requests_addressed_to_other_names(keyless_server, host):
    for path in ("/v1/models", "/health/ready"):
        response = httpx.get(keyless_server.base_url + path, headers={"Host": host})
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(keyless_server.base_url + "/v1/models").status_code == 200


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]", "[::1]:{port}"]
)
def test_keyless_server_answers_loopback_names_with_or_without_port(keyless_server, host):
    response = httpx.post(
        keyless_server.base_url + "/v1/chat/completions",
        headers={"Host": host.format(port=keyless_server.port)},
        json={"model": "tiny-mllama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert response.status_code == 200, response.text


def test_health_tells_strangers_only_state_model_and_version(server):
    for path in ("/health/ready", "/health/live"):
        public = httpx.get(server.base_url + path)
        assert public.status_code == 200
        assert set(public.json()) <= {"status", "model", "version"}
    detailed = httpx.get(server.base_url + "/health/ready", headers=AUTH).json()
    assert "gpus" in detailed


def test_metrics_carry_no_error_text_or_gpu_names(server):
    text = httpx.get(server.base_url + "/metrics").text
    assert "Traceback" not in text and "Error" not in text
    assert "NVIDIA" not in text and "name=" not in text.replace("model_name=", "")
