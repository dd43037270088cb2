"""A real `vlmkit serve` on the tiny model for `vlmkit bench` to measure (tests/bench/runner.py runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.runner import API_KEY
from tests.lab.server import running_server


@pytest.fixture(scope="session")
def bench_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    config = {
        "model_path": tiny_model_dir,
        "model_name": "tiny-mllama",
        "api_key": API_KEY,
        "max_context_tokens": 1024,
        "max_tokens_cap": 64,
        "default_max_tokens": 64,
        "backend": "transformers",
    }
    with running_server(config, tmp_path_factory.mktemp("bench-server")) as process:
        yield process
