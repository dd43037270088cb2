"""Fixtures shared by every test area: the tiny model checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.hosts.fixtures"]


def build_tiny_model(output: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "inference.checkpoint_builder", "--shape", "tiny", "--output", str(output)],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    return output


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama 3.2 Vision checkpoint with a real processor, built offline."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mllama")
