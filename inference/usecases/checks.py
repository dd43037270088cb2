"""Machine checks of free-text answers: each turns an answer into a score in [0, 1] and a reason.

The checks read answers the way a person would mark them: the number that matters is somewhere
in the text, an HTML table has the right rows, the JSON parses and holds the label's numbers, each
homework problem is marked right. They are lenient about wording and layout and strict about facts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from html.parser import HTMLParser

from inference.usecases.scenes import BarChart, DrinkPair, Homework, Receipt, TireDisplay

_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.])-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Score:
    value: float
    reason: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score lies in [0, 1], not {self.value}")


def numbers(text: str) -> list[Decimal]:
    """Every number written in the text ("$1,234.50" -> 1234.50), in order."""
    found = []
    for match in _NUMBER.finditer(text.replace("$", " ")):
        try:
            found.append(Decimal(match.group().replace(",", "")))
        except InvalidOperation:
            continue
    return found


def normalize(text: str) -> str:
    """Lowercase letters and digits only: "Llama-3.2 11B" and "llama 3.2 11b" compare equal."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def mentions(text: str, name: str) -> int:
    """Where the text first names `name` (its index in the normalized text), or -1."""
    return normalize(text).find(normalize(name))


def _has(values: list[Decimal], wanted: Decimal | int, tolerance: Decimal = Decimal(0)) -> bool:
    return any(abs(value - Decimal(wanted)) <= tolerance for value in values)


# --- receipt ------------------------------------------------------------------------------------


def receipt_total(answer: str, receipt: Receipt) -> Score:
    if _has(numbers(answer), receipt.total):
        return Score(1.0, f"names the total {receipt.total}")
    if _has(numbers(answer), receipt.subtotal):
        return Score(0.0, f"gives the subtotal {receipt.subtotal}, not the total {receipt.total}")
    return Score(0.0, f"the total {receipt.total} is not in the answer")


def receipt_subtotal_and_tax(answer: str, receipt: Receipt) -> Score:
    found = numbers(answer)
    parts = {"subtotal": _has(found, receipt.subtotal), "tax": _has(found, receipt.tax)}
    missing = [f"{name} {getattr(receipt, name)}" for name, ok in parts.items() if not ok]
    value = sum(parts.values()) / 2
    return Score(value, "subtotal and tax both right" if not missing else "missing or wrong: " + ", ".join(missing))


# --- chart as an HTML table ---------------------------------------------------------------------


class _TableRows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_table_rows(answer: str) -> list[list[str]] | None:
    """The rows (lists of cell texts) of the first HTML table in the answer, or None without one."""
    parser = _TableRows()
    parser.feed(answer)
    parser.close()
    if not parser.tables:
        return None
    return [row for row in parser.rows if row]


def chart_table(answer: str, chart: BarChart) -> Score:
    rows = html_table_rows(answer)
    if rows is None:
        return Score(0.0, "no HTML table in the answer")
    data_rows = [row for row in rows if numbers(" ".join(row[1:]))]
    points, problems = 0.0, []
    for index, (label, value) in enumerate(chart.bars):
        row = next((r for r in rows if any(normalize(label) in normalize(cell) for cell in r)), None)
        if row is not None:
            points += 0.5
            if _has(numbers(" ".join(cell for cell in row if normalize(label) not in normalize(cell))), value):
                points += 0.5
            else:
                problems.append(f"{label}: value should be {value}")
        elif index < len(data_rows) and _has(numbers(" ".join(data_rows[index][1:])), value):
            points += 0.5
            problems.append(f"{label}: label missing or misread (value {value} right)")
        else:
            problems.append(f"{label} = {value} is not in the table")
    score = points / len(chart.bars)
    return Score(score, "every bar's label and value are right" if not problems else "; ".join(problems))


def chart_fastest(answer: str, chart: BarChart) -> Score:
    fastest = max(chart.bars, key=lambda bar: bar[1])
    slowest = min(chart.bars, key=lambda bar: bar[1])
    difference = fastest[1] - slowest[1]
    named = mentions(answer, fastest[0]) >= 0
    others_first = [
        label
        for label, _ in chart.bars
        if label != fastest[0] and 0 <= mentions(answer, label) < mentions(answer, fastest[0])
    ]
    parts = []
    value = 0.0
    if named and not others_first:
        value += 0.5
    else:
        parts.append(f"the fastest is {fastest[0]}")
    if _has(numbers(answer), difference):
        value += 0.5
    else:
        parts.append(f"the difference is {difference} tokens/s")
    return Score(value, "fastest and difference right" if not parts else "; ".join(parts))


# --- homework -----------------------------------------------------------------------------------

_INCORRECT = re.compile(r"\bincorrect\b|\bwrong\b|\bnot correct\b|\bfalse\b|[✗✘❌×]")
_CORRECT = re.compile(r"\bcorrect\b|\bright\b|\btrue\b|[✓✔✅]")
_LEADING_NUMBER = re.compile(
    r"^\W*(?:(?:problem|question|exercise|no\.?|number)\s*)?#?(\d{1,2})(?!\s*\+)\s*(?:[).:\]|-]|\*\*|\s)", re.IGNORECASE
)
_EQUATION = re.compile(r"(\d+)\s*\+\s*(\d+)")
_SCORE = re.compile(r"(\d{1,2})\s*(?:/|out of|of)\s*(\d{1,2})", re.IGNORECASE)


def homework_marks(answer: str, homework: Homework) -> dict[int, bool]:
    """Problem number (1-based) -> the answer's verdict (True: marked correct), for each one marked."""
    by_operands = {(a, b): i + 1 for i, (a, b, _) in enumerate(homework.problems)}
    marks: dict[int, bool] = {}
    for line in answer.splitlines():
        number = None
        leading = _LEADING_NUMBER.match(line)
        equation = _EQUATION.search(line)
        if leading and 1 <= int(leading.group(1)) <= len(homework.problems):
            number = int(leading.group(1))
        elif equation:  # no number before it: the problem is the one with these operands
            number = by_operands.get((int(equation.group(1)), int(equation.group(2))))
        if number is None or number in marks:
            continue
        verdict = line.lower()
        if _INCORRECT.search(verdict):
            marks[number] = False
        elif _CORRECT.search(verdict):
            marks[number] = True
    return marks


def homework_marking(answer: str, homework: Homework) -> Score:
    marks = homework_marks(answer, homework)
    right = sum(marks.get(i + 1) is correct for i, correct in enumerate(homework.correct))
    total = len(homework.problems)
    stated = [(int(got), int(out_of)) for got, out_of in _SCORE.findall(answer) if int(out_of) == total]
    score_right = bool(stated) and stated[-1][0] == homework.score
    value = 0.75 * right / total + (0.25 if score_right else 0.0)
    wrong = [i + 1 for i, correct in enumerate(homework.correct) if marks.get(i + 1) is not correct]
    reason = f"{right}/{total} problems marked right"
    if wrong:
        reason += " (wrong or unmarked: " + ", ".join(map(str, wrong)) + ")"
    reason += f"; score {homework.score}/{total} " + (
        "stated" if score_right else f"not stated (said {stated[-1][0]}/{total})" if stated else "not stated"
    )
    return Score(round(value, 4), reason)


# --- nutrition labels ---------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.split()[0]


def _position(answer: str, name: str) -> int:
    full = mentions(answer, name)
    if full >= 0:
        return full
    match = re.search(rf"\b{re.escape(_short(name))}\b", answer, re.IGNORECASE)
    return len(normalize(answer[: match.start()])) if match else -1


def diet_choice(answer: str, pair: DrinkPair) -> Score:
    light, heavy = _position(answer, pair.lighter.name), _position(answer, pair.heavier.name)
    if light < 0:
        return Score(0.0, f"does not recommend {pair.lighter.name} ({pair.lighter.calories} kcal)")
    if heavy >= 0 and heavy < light:
        return Score(0.5, f"names {pair.heavier.name} first; the lighter drink is {pair.lighter.name}")
    return Score(1.0, f"recommends {pair.lighter.name} ({pair.lighter.calories} kcal)")


def extract_json(answer: str):
    """The JSON value in an answer: a ```json block, else the outermost [...] or {...}; None if none parses."""
    candidates = re.findall(r"```(?:json)?\s*(.*?)```", answer, re.DOTALL)
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = answer.find(opener), answer.rfind(closer)
        if 0 <= start < end:
            candidates.append(answer[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


_FIELDS = {
    "calories": ("calories", "calorie", "kcal", "energy"),
    "sodium_mg": ("sodium_mg", "sodium"),
    "sugars_g": ("sugars_g", "sugar_g", "sugars", "sugar", "total_sugars", "total_sugars_g"),
}


def _objects(value) -> list[dict]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    if isinstance(value, dict):
        for inner in value.values():
            if isinstance(inner, list) and inner and all(isinstance(item, dict) for item in inner):
                return inner
        if all(isinstance(inner, dict) for inner in value.values()):
            return [{"name": key, **inner} for key, inner in value.items()]
    return []


def _field(obj: dict, names: tuple[str, ...]) -> Decimal | None:
    flat = {normalize(key): item for key, item in obj.items()}
    for name in names:
        item = flat.get(normalize(name))
        if item is None:
            continue
        found = numbers(str(item))
        if found:
            return found[0]
    return None


def nutrition_json(answer: str, pair: DrinkPair) -> Score:
    value = extract_json(answer)
    if value is None:
        return Score(0.0, "the answer holds no JSON that parses")
    objects = _objects(value)
    if not objects:
        return Score(0.25, "JSON parses but holds no objects for the drinks")
    matched, problems = 0, []
    for index, drink in enumerate(pair.drinks):
        obj = next(
            (
                o
                for o in objects
                if any(
                    isinstance(v, str) and (mentions(v, drink.name) >= 0 or mentions(v, _short(drink.name)) >= 0)
                    for v in o.values()
                )
            ),
            None,
        )
        if obj is None and index < len(objects):
            obj = objects[index]
        for field, names in _FIELDS.items():
            got = _field(obj, names) if obj is not None else None
            if got is not None and got == getattr(drink, field):
                matched += 1
            else:
                problems.append(f"{drink.name} {field} should be {getattr(drink, field)} (got {got})")
    total = len(pair.drinks) * len(_FIELDS)
    return Score(
        round(0.25 + 0.75 * matched / total, 4),
        "JSON parses and every number is right" if not problems else "JSON parses; " + "; ".join(problems),
    )


# --- tire pressure ------------------------------------------------------------------------------

_LOW = re.compile(r"\blow\b|under-?inflat|\bflat\b|deflat|loss of pressure|losing pressure", re.IGNORECASE)


def _position_pattern(position: str) -> re.Pattern:
    first, second = position.split()
    return re.compile(
        rf"\b{first}[\s-]+{second}\b|\b{second}[\s-]+{first}\b|\b{second}[\s-]hand[\s-]+{first}\b", re.IGNORECASE
    )


def tire_problem(answer: str, display: TireDisplay) -> Score:
    found = numbers(answer)
    low_reading = display.pressures[display.low]
    parts = {
        "says the pressure is low": bool(_LOW.search(answer)),
        f"names the {display.low} tire": bool(_position_pattern(display.low).search(answer)),
        f"reads {low_reading} psi": _has(found, low_reading),
        f"gives a good pressure near {display.normal} psi": any(abs(v - display.normal) <= 3 for v in found),
    }
    missing = [name for name, ok in parts.items() if not ok]
    value = sum(parts.values()) / len(parts)
    return Score(
        value, "problem, tire, reading and target all right" if not missing else "missing: " + "; ".join(missing)
    )
