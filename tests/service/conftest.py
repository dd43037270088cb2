"""A real server on the tiny model, and the official openai client pointed at it.

VLMKIT_TEST_BACKEND picks the backend path: transformers (default: CPU or CUDA, fp32/bf16),
transformers-bf16 and unsloth-4bit (CUDA, run on the GPU machine), transformers-4bit (bitsandbytes).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.service.serverproc import ServerProcess, running_server

API_KEY = "test-key-123"

BACKENDS = {
    "transformers": {"backend": "transformers"},
    "transformers-bf16": {"backend": "transformers", "device": "cuda", "dtype": "bfloat16"},
    "transformers-4bit": {"backend": "transformers", "load_in_4bit": True},
    "unsloth-4bit": {"backend": "unsloth", "device": "cuda", "load_in_4bit": True},
}


def backend_config() -> dict:
    name = os.environ.get("VLMKIT_TEST_BACKEND", "transformers")
    return dict(BACKENDS[name])


def png_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):
        for y in range(height):
            image.putpixel((x, y), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(question: str, url: str | None = None) -> dict:
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url or data_uri(png_bytes())}},
        {"type": "text", "text": question},
    ]}


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
