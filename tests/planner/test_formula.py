"""The seed's rule of thumb, reproduced: M = (P × 4 bytes) / (32 / Q) × 1.2."""

from __future__ import annotations

import pytest

from inference.planner import formula
from inference.planner.formula import formula_bytes, gpus_needed
from inference.planner.gpus import parse_gpus
from tests.lab.published import META_90B, fixture_dir


def test_formula_gives_the_seeds_216_gb_for_90b_at_16_bits():
    assert formula_bytes(90e9, 16) == pytest.approx(216e9)


def test_formula_gives_the_seeds_54_gb_for_90b_at_4_bits():
    assert formula_bytes(90e9, 4) == pytest.approx(54e9)


def test_formula_says_three_80gb_gpus_for_16_bits_and_one_for_4_bits_as_the_seed_does():
    gpu = parse_gpus("80GB")[0].memory
    assert gpus_needed(formula_bytes(90e9, 16), gpu) == 3
    assert gpus_needed(formula_bytes(90e9, 4), gpu) == 1


def test_formula_method_counts_parameters_from_the_config_when_none_are_given():
    result = formula(fixture_dir(META_90B), "80GB", bits=16)
    assert result["parameters_source"] == "counted from config.json"
    assert result["total_bytes"] == pytest.approx(result["parameters"] * 2 * 1.2, rel=1e-9)
    assert not result["fits"] and result["gpus_needed"] == 3


def test_formula_rejects_nonsense_inputs():
    with pytest.raises(ValueError):
        formula_bytes(0, 16)
