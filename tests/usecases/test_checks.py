"""Each check scores hand-written good answers high and bad ones low: every check can fail."""

from __future__ import annotations

from decimal import Decimal

import pytest

from inference.usecases import checks
from inference.usecases.scenes import BarChart, Drink, DrinkPair, Homework, Receipt, TireDisplay

RECEIPT = Receipt(
    "GREEN GROCER",
    (
        ("Pasta 500g", Decimal("6.06")),
        ("Whole milk 1L", Decimal("8.78")),
        ("Cheddar cheese", Decimal("5.59")),
        ("Tomatoes", Decimal("5.82")),
    ),
    Decimal("0.09"),
    Decimal("26.25"),
    Decimal("2.36"),
    Decimal("28.61"),
)
CHART = BarChart(
    "Output tokens per second",
    (("Llama 3.2 11B", 173), ("Pixtral 12B", 18), ("Phi-3.5 Vision", 132), ("Llama 3.2 90B", 86), ("Qwen2-VL 7B", 76)),
)
# 3 wrong answers: problems 1, 2 and 6.
HOMEWORK = Homework(
    (
        (4, 44, 50),
        (3, 27, 40),
        (16, 30, 46),
        (49, 4, 53),
        (36, 17, 53),
        (31, 34, 67),
        (17, 25, 42),
        (17, 46, 63),
        (17, 32, 49),
        (21, 4, 25),
        (38, 44, 82),
        (9, 14, 23),
    )
)
DRINKS = DrinkPair((Drink("Maxx Power", 120, 240, 28, 160), Drink("Crisp Citrus Zero", 0, 45, 0, 0)))
TIRES = TireDisplay({"front left": 36, "front right": 21, "rear left": 36, "rear right": 36}, "front right", 36)


def test_numbers_reads_money_thousands_and_decimals():
    assert checks.numbers("Total: $1,234.50, tax 2.36 and 7 items") == [Decimal("1234.50"), Decimal("2.36"), Decimal(7)]


# --- receipt ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "The total charge in the receipt is $28.61.",
        "Subtotal $26.25 plus tax $2.36 gives a **total of $28.61**.",
    ],
)
def test_receipt_total_found(answer):
    assert checks.receipt_total(answer, RECEIPT).value == 1.0


@pytest.mark.parametrize(
    "answer", ["The total is $26.25.", "The total charge is $28.16.", "I cannot read the receipt."]
)
def test_receipt_total_wrong_or_missing_scores_zero(answer):
    score = checks.receipt_total(answer, RECEIPT)
    assert score.value == 0.0
    assert "28.61" in score.reason


def test_receipt_subtotal_and_tax_scored_in_halves():
    assert checks.receipt_subtotal_and_tax("Subtotal: $26.25, tax (9%): $2.36", RECEIPT).value == 1.0
    half = checks.receipt_subtotal_and_tax("The subtotal was $26.25 and the tax $2.63.", RECEIPT)
    assert half.value == 0.5 and "tax 2.36" in half.reason
    assert checks.receipt_subtotal_and_tax("No idea.", RECEIPT).value == 0.0


# --- chart --------------------------------------------------------------------------------------

GOOD_TABLE = """Here is the table:
```html
<table>
  <thead><tr><th>Model</th><th>Output tokens/s</th></tr></thead>
  <tbody>
    <tr><td>Llama 3.2 11B</td><td>173</td></tr>
    <tr><td>Pixtral 12B</td><td>18</td></tr>
    <tr><td>Phi-3.5 Vision</td><td>132</td></tr>
    <tr><td>Llama-3.2 90B</td><td>86 tokens/s</td></tr>
    <tr><td>Qwen2-VL 7B</td><td>76</td></tr>
  </tbody>
</table>
```"""


def test_chart_table_with_every_bar_scores_one():
    assert checks.chart_table(GOOD_TABLE, CHART).value == 1.0


def test_chart_table_misread_names_and_values_lose_points():
    # The seed's failure: names misread. Two names wrong (values right), one value wrong.
    answer = (
        GOOD_TABLE.replace("Pixtral 12B", "Pixtel 12B")
        .replace("Qwen2-VL 7B", "Qwen 7B")
        .replace("<td>132</td>", "<td>123</td>")
    )
    score = checks.chart_table(answer, CHART)
    assert score.value == pytest.approx((1 + 0.5 + 0.5 + 1 + 0.5) / 5)
    assert "Phi-3.5 Vision: value should be 132" in score.reason
    assert "Pixtral 12B: label missing or misread" in score.reason


def test_chart_without_html_table_scores_zero():
    assert checks.chart_table("| Model | tokens/s |\n| Llama 3.2 11B | 173 |", CHART).value == 0.0


def test_chart_fastest_and_difference():
    good = "Llama 3.2 11B is the fastest (173 tokens/s); Pixtral 12B is the slowest at 18, so the gap is 155 tokens/s."
    assert checks.chart_fastest(good, CHART).value == 1.0
    wrong = "Phi-3.5 Vision is the fastest, 114 tokens/s faster than Pixtral 12B."
    assert checks.chart_fastest(wrong, CHART).value == 0.0


# --- homework -----------------------------------------------------------------------------------

GOOD_MARKING = """1) 4 + 44 = 50 - incorrect (should be 48)
2) 3 + 27 = 40 - incorrect, the answer is 30
3) 16 + 30 = 46 - correct
4) 49 + 4 = 53 - correct
5) 36 + 17 = 53 - correct
6) 31 + 34 = 67 - incorrect (65)
7) 17 + 25 = 42 - correct
8) 17 + 46 = 63 - correct
9) 17 + 32 = 49 - correct
10) 21 + 4 = 25 - correct
11) 38 + 44 = 82 - correct
12) 9 + 14 = 23 - correct

Total score: 9/12"""


def test_homework_marked_right_with_the_score_scores_one():
    assert checks.homework_marking(GOOD_MARKING, HOMEWORK).value == 1.0


def test_homework_marking_reads_tables_and_ticks_without_numbers():
    table = (
        "| Problem | Verdict |\n|---|---|\n"
        + "\n".join(f"| {a} + {b} = {c} | {'✓' if a + b == c else '✗'} |" for a, b, c in HOMEWORK.problems)
        + "\n\nScore: 9 out of 12"
    )
    assert checks.homework_marking(table, HOMEWORK).value == 1.0


def test_homework_all_correct_is_the_seeds_mistake_and_scores_low():
    # The seed's model answered 12/12 on a sheet it had not checked.
    lazy = "\n".join(f"{i}. correct" for i in range(1, 13)) + "\nScore: 12/12"
    score = checks.homework_marking(lazy, HOMEWORK)
    assert score.value == pytest.approx(0.75 * 9 / 12)
    assert "wrong or unmarked: 1, 2, 6" in score.reason and "said 12/12" in score.reason
    assert checks.homework_marking("All the answers are correct, 12/12!", HOMEWORK).value == 0.0


# --- nutrition ----------------------------------------------------------------------------------


def test_diet_choice():
    assert checks.diet_choice("You should drink Crisp Citrus Zero: 0 calories versus 120.", DRINKS).value == 1.0
    assert checks.diet_choice("Go for the Crisp one, it has no sugar.", DRINKS).value == 1.0
    assert checks.diet_choice("Maxx Power gives you energy for your workout.", DRINKS).value == 0.0
    assert checks.diet_choice("Not Maxx Power (120 kcal) but Crisp Citrus Zero.", DRINKS).value == 0.5


GOOD_JSON = """```json
[
  {"name": "Maxx Power", "calories": 120, "sodium_mg": 240, "sugars_g": 28},
  {"name": "Crisp Citrus Zero", "calories": 0, "sodium_mg": 45, "sugars_g": 0}
]
```"""


def test_nutrition_json_that_parses_with_every_number_scores_one():
    assert checks.nutrition_json(GOOD_JSON, DRINKS).value == 1.0
    # Another shape a model may choose: an object keyed by drink, units in strings.
    keyed = (
        '{"Crisp Citrus Zero": {"calories": "0 kcal", "sodium": "45mg", "sugars": "0g"}, '
        '"Maxx Power": {"calories": "120", "sodium": "240 mg", "sugars": "28 g"}}'
    )
    assert checks.nutrition_json(keyed, DRINKS).value == 1.0


def test_nutrition_json_wrong_numbers_and_broken_json():
    wrong = GOOD_JSON.replace('"sodium_mg": 240', '"sodium_mg": 24').replace('"calories": 0,', '"calories": 10,')
    score = checks.nutrition_json(wrong, DRINKS)
    assert score.value == pytest.approx(0.25 + 0.75 * 4 / 6)
    assert "Maxx Power sodium_mg should be 240" in score.reason
    assert checks.nutrition_json('[{"name": "Maxx Power", "calories": 120,]', DRINKS).value == 0.0
    assert checks.nutrition_json('{"drinks": "two"}', DRINKS).value == 0.25


# --- tire pressure ------------------------------------------------------------------------------


def test_tire_problem():
    good = (
        "The low tire pressure warning is on: the front right tire shows only 21 PSI. "
        "It should be about 36 PSI, like the other tires."
    )
    assert checks.tire_problem(good, TIRES).value == 1.0
    wrong_tire = "The rear left tire is low at 21 psi; inflate it to 36 psi."
    assert checks.tire_problem(wrong_tire, TIRES).value == 0.75
    vague = "There is a warning light on the dashboard."
    assert checks.tire_problem(vague, TIRES).value == 0.0


def test_score_outside_zero_one_is_refused():
    with pytest.raises(ValueError):
        checks.Score(1.5, "too good")
