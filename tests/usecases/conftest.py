"""A real `vlmkit serve` on the tiny random model, for the suite's plumbing mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.server import API_KEY, running_server


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "default_max_tokens": 16,
        "max_tokens_cap": 64,
        "device": "cpu",
    }
    with running_server(config, tmp_path_factory.mktemp("usecases-server")) as process:
        yield process
