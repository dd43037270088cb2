"""scripts/bound_report.py: the bytes a decoding step reads, and bench levels against the bound they give."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bound_report.py"


@pytest.fixture(scope="module")
def bound_report():
    spec = importlib.util.spec_from_file_location("bound_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_reads_the_language_model_and_its_head_but_not_the_embeddings_or_the_vision_tower(
    bound_report, tiny_model_dir
):
    from transformers import MllamaForConditionalGeneration

    model = MllamaForConditionalGeneration.from_pretrained(tiny_model_dir, dtype="auto")
    text = model.model.language_model
    read = sum(p.numel() * p.element_size() for p in text.parameters()) - text.embed_tokens.weight.nbytes
    read += model.lm_head.weight.nbytes
    assert bound_report.bytes_per_token(tiny_model_dir) == read
    vision = sum(p.numel() * p.element_size() for p in model.model.vision_model.parameters())
    assert vision > 0 and bound_report.bytes_per_token(tiny_model_dir) < read + vision


def test_each_level_is_set_against_its_per_request_and_total_bound(bound_report):
    level = {
        "concurrency": 8,
        "decode_tok_per_s": {"p50": 45.0},
        "output_tok_per_s": 200.0,
        "ttft_s": {"p50": 0.25},
    }
    (row,) = bound_report.rows({"levels": [level]}, "11b-nf4", bound_per_request=100.0)
    assert row == "| 11b-nf4 | 8 | 250 ms | 45.0 (45%) | 200.0 (25%) | 100.0 |"
