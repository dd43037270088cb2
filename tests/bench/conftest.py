"""A real `vlmkit serve` on the tiny model, and `vlmkit bench` run against it as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.serverproc import ServerProcess, running_server

API_KEY = "bench-key-123"


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


class BenchRun:
    def __init__(self, completed: subprocess.CompletedProcess, json_file: Path) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.report = json.loads(json_file.read_text()) if json_file.exists() else None


def run_bench(server: ServerProcess, workdir: Path, *args: str, api_key: str = API_KEY) -> BenchRun:
    """`vlmkit bench --url <server> --json <workdir>/report.json ARGS`, light on the CPU: small images."""
    json_file = workdir / "report.json"
    env = {**os.environ, "VLMKIT_API_KEY": api_key}
    env.pop("VLMKIT_URL", None)
    completed = subprocess.run(
        [sys.executable, "-m", "inference.cli", "bench", "--url", server.base_url + "/v1", "--json", str(json_file),
         *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    return BenchRun(completed, json_file)
