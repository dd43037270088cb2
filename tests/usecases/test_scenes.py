"""The generated images: the same seed draws the same facts and pixels, and the facts hang together."""

from __future__ import annotations

import io

from PIL import Image

from inference.usecases import scenes
from inference.usecases.cases import DEFAULT_SEED, build_cases


def test_same_seed_same_images_other_seed_other_facts():
    first, again, other = build_cases(DEFAULT_SEED), build_cases(DEFAULT_SEED), build_cases(DEFAULT_SEED + 1)
    assert [case.png() for case in first] == [case.png() for case in again]
    assert [case.truth for case in first] == [case.truth for case in again]
    assert [case.truth for case in first] != [case.truth for case in other]


def test_cases_cover_the_seeds_kinds_with_a_follow_up_and_a_json_question():
    cases = build_cases()
    assert [case.name for case in cases] == ["receipt", "chart", "homework", "nutrition", "tire-pressure"]
    assert sum(len(case.turns) > 1 for case in cases) >= 1
    assert any(turn.wants_json for case in cases for turn in case.turns)
    for case in cases:
        image = Image.open(io.BytesIO(case.png()))
        assert image.format == "PNG" and image.width >= 500 and image.height >= 500


def test_every_ideal_answer_scores_one_across_seeds():
    # The ground truth, the questions and the checks agree, whatever the seed draws.
    for seed in range(40):
        for case in build_cases(seed):
            for turn in case.turns:
                score = turn.check(turn.ideal)
                assert score.value == 1.0, (seed, case.name, score.reason)


def test_facts_hang_together():
    for seed in range(40):
        rng = scenes.random.Random(seed)
        receipt = scenes.make_receipt(rng)
        assert receipt.total == receipt.subtotal + receipt.tax == sum(p for _, p in receipt.items) + receipt.tax
        chart = scenes.make_chart(rng)
        assert len({label for label, _ in chart.bars}) == len({value for _, value in chart.bars}) == 5
        homework = scenes.make_homework(rng)
        assert 2 <= len(homework.problems) - homework.score <= 4
        assert len({(a, b) for a, b, _ in homework.problems}) == 12
        drinks = scenes.make_drinks(rng)
        assert drinks.lighter.calories < drinks.heavier.calories
        tires = scenes.make_tires(rng)
        assert tires.pressures[tires.low] < tires.normal - 5
