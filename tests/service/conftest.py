"""A real server on the tiny model, and the official openai client pointed at it.

The backend path is the one VLMKIT_TEST_BACKEND names (tests/lab/server.py).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.lab.chat import png_bytes
from tests.lab.server import API_KEY, ServerProcess, backend_config, running_server


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "red.png").write_bytes(png_bytes())
    return folder


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, image_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "max_context_tokens": 1024,
        "max_tokens_cap": 512,
        "default_max_tokens": 64,
        "max_request_bytes": 1024 * 1024,
        "max_image_pixels": 4_000_000,
        "allow_remote_images": True,  # every remote URL the tests send is refused before any connection
        "local_image_dir": image_dir,
        **backend_config(),
    }
    with running_server(config, tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
