"""The use cases: an image, the questions asked about it in one conversation, and each answer's check.

In the spirit of the eleven cases the reference manual deployment was judged on, with a ground truth the
suite knows because it drew the image. Later turns are follow-up questions on the same image: the
image goes with the first question and stays in the history.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from inference.usecases import checks, scenes

DEFAULT_SEED = 2024


@dataclass(frozen=True)
class Turn:
    question: str
    check: Callable[[str], checks.Score]
    ideal: str  # an answer that scores 1.0: documents what the check wants
    wants_json: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    image: Image.Image = field(repr=False)
    truth: str  # the facts the image shows, in one line, for the report
    turns: tuple[Turn, ...]

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()


def build_cases(seed: int = DEFAULT_SEED) -> list[Case]:
    rng = random.Random(seed)
    return [
        _receipt(scenes.make_receipt(rng)),
        _chart(scenes.make_chart(rng)),
        _homework(scenes.make_homework(rng)),
        _nutrition(scenes.make_drinks(rng)),
        _tires(scenes.make_tires(rng)),
    ]


def _receipt(receipt: scenes.Receipt) -> Case:
    return Case(
        "receipt",
        "Receipt: the total, then subtotal and tax",
        scenes.draw_receipt(receipt),
        f"total ${receipt.total}, subtotal ${receipt.subtotal}, tax ${receipt.tax}",
        (
            Turn(
                "What's the total charge in the receipt?",
                lambda answer: checks.receipt_total(answer, receipt),
                f"The total charge is ${receipt.total}.",
            ),
            Turn(
                "What were the subtotal and the tax on this receipt?",
                lambda answer: checks.receipt_subtotal_and_tax(answer, receipt),
                f"The subtotal was ${receipt.subtotal} and the tax was ${receipt.tax}.",
            ),
        ),
    )


def _chart(chart: scenes.BarChart) -> Case:
    rows = "".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in chart.bars)
    fastest = max(chart.bars, key=lambda bar: bar[1])
    slowest = min(chart.bars, key=lambda bar: bar[1])
    return Case(
        "chart",
        "Bar chart to an HTML table, then a question on it",
        scenes.draw_chart(chart),
        ", ".join(f"{label} {value}" for label, value in chart.bars),
        (
            Turn(
                "Convert the chart to an HTML table with one row per bar: the bar's label in the first column "
                "and its value in the second. Answer with the HTML table only.",
                lambda answer: checks.chart_table(answer, chart),
                f"<table><tr><th>Model</th><th>Output tokens/s</th></tr>{rows}</table>",
            ),
            Turn(
                "Which model is the fastest, and how many tokens per second faster is it than the slowest one?",
                lambda answer: checks.chart_fastest(answer, chart),
                f"{fastest[0]} is the fastest at {fastest[1]} tokens/s, {fastest[1] - slowest[1]} tokens/s "
                f"faster than {slowest[0]} ({slowest[1]}).",
            ),
        ),
    )


def _homework(homework: scenes.Homework) -> Case:
    total = len(homework.problems)
    lines = [
        f"{i + 1}) {a} + {b} = {answer}: {'correct' if a + b == answer else f'incorrect, it is {a + b}'}"
        for i, (a, b, answer) in enumerate(homework.problems)
    ]
    return Case(
        "homework",
        "Addition homework: mark each answer and give the score",
        scenes.draw_homework(homework),
        f"{homework.score}/{total} correct; wrong: "
        + ", ".join(str(i + 1) for i, ok in enumerate(homework.correct) if not ok),
        (
            Turn(
                f"This is a child's math homework. Check each answer: for each problem write its number and whether "
                f"the answer is correct or incorrect, one problem per line, then give the total score as "
                f"correct/{total}.",
                lambda answer: checks.homework_marking(answer, homework),
                "\n".join(lines) + f"\nScore: {homework.score}/{total}",
            ),
        ),
    )


def _nutrition(pair: scenes.DrinkPair) -> Case:
    ideal_json = json.dumps(
        [
            {"name": d.name, "calories": d.calories, "sodium_mg": d.sodium_mg, "sugars_g": d.sugars_g}
            for d in pair.drinks
        ],
        indent=2,
    )
    return Case(
        "nutrition",
        "Two nutrition labels: a diet choice, then the facts as JSON",
        scenes.draw_drinks(pair),
        "; ".join(f"{d.name}: {d.calories} kcal, sodium {d.sodium_mg} mg, sugars {d.sugars_g} g" for d in pair.drinks),
        (
            Turn(
                "I am on a diet. Which of these two drinks should I drink?",
                lambda answer: checks.diet_choice(answer, pair),
                f"{pair.lighter.name}: it has {pair.lighter.calories} calories, against "
                f"{pair.heavier.calories} for {pair.heavier.name}.",
            ),
            Turn(
                "Generate the nutrition facts of the two drinks in JSON: a list of objects with the keys name, "
                "calories, sodium_mg and sugars_g (numbers). Answer with the JSON only.",
                lambda answer: checks.nutrition_json(answer, pair),
                ideal_json,
                wants_json=True,
            ),
        ),
    )


def _tires(display: scenes.TireDisplay) -> Case:
    low = display.pressures[display.low]
    return Case(
        "tire-pressure",
        "Car dashboard: the tire pressure warning",
        scenes.draw_tires(display),
        f"{display.low} {low} psi, the others {display.normal} psi",
        (
            Turn(
                "What's the problem shown on this dashboard? Which tire is it, what pressure does it show, "
                "and what should good numbers be?",
                lambda answer: checks.tire_problem(answer, display),
                f"The tire pressure warning is on: the {display.low} tire is low at {low} PSI. It should be "
                f"inflated to about {display.normal} PSI, like the other three.",
            ),
        ),
    )
