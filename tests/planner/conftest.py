"""Fixtures for the planner: the published configs, real-shape and real bnb checkpoints, a loopback mirror."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.lab.folder_mirror import Mirror
from tests.lab.published import FIXTURES, fixture_dir


@pytest.fixture(scope="session")
def public_sizes() -> dict:
    return json.loads((FIXTURES / "public_sizes.json").read_text())


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, online, no token: nothing leaks in from the machine."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


@pytest.fixture
def mirror(hf_home, monkeypatch):
    """Start a loopback mirror serving {repo_id: folder}; HF_ENDPOINT points at it."""
    started: list[Mirror] = []

    def start(repos: dict[str, Path]) -> Mirror:
        m = Mirror(repos).__enter__()
        started.append(m)
        monkeypatch.setenv("HF_ENDPOINT", m.url)
        return m

    yield start
    for m in started:
        m.__exit__(None, None, None)


@pytest.fixture(scope="session")
def tiny_bnb_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny model quantized by transformers + bitsandbytes on the CPU and saved: real 4-bit and 8-bit checkpoints."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import BitsAndBytesConfig, MllamaForConditionalGeneration

    from inference.backends.transformers_backend import UNQUANTIZED_MODULES

    root = tmp_path_factory.mktemp("bnb")
    out = {}
    configs = {
        # nf4 as `vlmkit serve` applies it with load_in_4bit: vision tower, projector and lm_head stay 16-bit.
        "nf4": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
        ),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }
    for name, quantization in configs.items():
        model = MllamaForConditionalGeneration.from_pretrained(
            tiny_model_dir, quantization_config=quantization, device_map="cpu", dtype=torch.bfloat16
        )
        model.save_pretrained(root / name)
        del model
        out[name] = root / name
    return out


@pytest.fixture
def fixture_copy(tmp_path):
    """A writable copy of a fixture folder."""

    def copy(repo_id: str) -> Path:
        target = tmp_path / repo_id
        shutil.copytree(fixture_dir(repo_id), target)
        return target

    return copy
