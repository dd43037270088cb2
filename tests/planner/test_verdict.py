"""Verdicts for the seed's deployments, the changes suggested when it does not fit, the largest context."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inference.planner import plan
from inference.planner.gpus import parse_gpus
from inference.planner.memory import Serving
from tests.lab.published import BNB_11B, BNB_90B, META_11B, META_90B, fixture_dir


def test_90b_bnb_4bit_fits_one_80gb_gpu_as_in_the_seed():
    result = plan(fixture_dir(BNB_90B), "80GB", context=8192)
    assert result.fits
    assert result.estimate.total <= parse_gpus("80GB")[0].memory
    assert result.suggestions == []


def test_90b_in_16_bit_does_not_fit_one_80gb_gpu_and_the_suggestions_would():
    result = plan(fixture_dir(META_90B), "80GB", context=8192)
    assert not result.fits
    changes = {s.change: s for s in result.suggestions}
    assert changes["bits"].value == 4 and changes["bits"].estimate.fits
    assert changes["gpus"].value == 3 and changes["gpus"].estimate.fits  # the seed's 3 × 80 GB
    assert "context" not in changes and "batch" not in changes  # the weights alone overflow: no context helps
    assert result.recommendation is result.suggestions[0]
    assert result.max_context is None


def test_90b_in_16_bit_fits_three_80gb_gpus_with_every_layer_placed_once_in_order():
    result = plan(fixture_dir(META_90B), "3x80GB", context=8192)
    assert result.fits
    loads = result.estimate.loads
    assert len(loads) == 3 and all(load.units and load.used <= load.gpu.memory for load in loads)
    layers = [int(u.name.split()[1]) for load in loads for u in load.units if u.name.startswith("layer ")]
    assert layers == list(range(100))
    assert loads[0].units[0].name.startswith("vision") and loads[-1].units[-1].name == "output head"


def test_two_80gb_gpus_are_one_short_for_the_90b_in_16_bit():
    assert not plan(fixture_dir(META_90B), "2x80GB").fits


def test_largest_context_fits_and_one_more_token_does_not():
    result = plan(fixture_dir(BNB_90B), "80GB", context=8192)
    limit = result.max_context
    assert 8192 <= limit < result.estimator.dims.max_position_embeddings
    gpus = parse_gpus("80GB")
    assert result.estimator.estimate(gpus, Serving(context=limit)).fits
    assert not result.estimator.estimate(gpus, Serving(context=limit + 1)).fits


def test_a_context_too_long_for_the_gpu_gets_a_shorter_context_that_fits():
    result = plan(fixture_dir(META_11B), "24GB", context=131072)
    assert not result.fits
    shorter = next(s for s in result.suggestions if s.change == "context")
    assert shorter.value == result.max_context < 131072 and shorter.estimate.fits


def test_a_batch_too_large_gets_the_largest_batch_that_fits():
    result = plan(fixture_dir(META_11B), "40GB", context=16384, batch=16)
    assert not result.fits
    batch = next(s for s in result.suggestions if s.change == "batch")
    assert batch.estimate.fits and 1 <= batch.value < 16
    estimator, gpus = result.estimator, parse_gpus("40GB")
    assert not estimator.estimate(gpus, replace(result.estimate.serving, batch=batch.value + 1)).fits


def test_requested_bits_replace_the_stored_ones():
    stored = plan(fixture_dir(META_11B), "80GB")
    four = plan(fixture_dir(META_11B), "80GB", bits=4)
    assert stored.estimate.weights.bits == 16 and four.estimate.weights.bits == 4
    assert four.estimate.weights.groups.total < stored.estimate.weights.groups.total / 2.5


def test_a_larger_margin_needs_more_memory():
    assert (
        plan(fixture_dir(META_11B), "80GB", margin_fraction=0.2).estimate.total
        > plan(fixture_dir(META_11B), "80GB").estimate.total
    )


@pytest.mark.parametrize("spec, count", [("80GB", 1), ("2x80GB", 2), ("80GB,48GB", 2), ("2x80GB,1x24GB", 3)])
def test_gpu_lists_are_read_as_given(spec, count):
    assert len(parse_gpus(spec)) == count


def test_a_shorter_context_that_keeps_half_is_recommended_before_more_gpus():
    # the 11B already in 4 bits (no fewer bits to offer) on a 24 GB GPU, asked for a quarter more context than fits
    fitting = plan(fixture_dir(BNB_11B), "24GB", context=1024).max_context
    result = plan(fixture_dir(BNB_11B), "24GB", context=fitting + fitting // 4)
    assert not result.fits
    assert result.recommendation.change == "context" and result.recommendation.value == fitting
    assert any(s.change == "gpus" for s in result.suggestions)


def test_more_gpus_are_recommended_before_cutting_the_context_below_half():
    result = plan(fixture_dir(META_11B), "24GB", context=131072)
    assert [s.change for s in result.suggestions] == ["gpus", "context"]
