"""Ask each case's questions of a running server, check the answers, and report.

Two modes. Plumbing (for the tiny random model): every question gets an answer with at least one
generated token, the JSON question included; nothing is scored. Scored (a real model): each turn
gets its check's score, a case's score is the mean of its turns, the total is the mean of the
cases, and an optional threshold turns the total into a pass or a fail.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai

from inference.usecases.cases import Case
from inference.usecases.checks import Score


@dataclass
class TurnResult:
    question: str
    answer: str = ""
    error: str = ""
    completion_tokens: int = 0
    seconds: float = 0.0
    score: Score | None = None
    wants_json: bool = False

    @property
    def arrived(self) -> bool:
        """The plumbing check: an answer came back, as text, with at least one generated token."""
        return not self.error and isinstance(self.answer, str) and self.completion_tokens >= 1


@dataclass
class CaseResult:
    name: str
    title: str
    truth: str
    turns: list[TurnResult] = field(default_factory=list)

    @property
    def arrived(self) -> bool:
        return all(turn.arrived for turn in self.turns)

    @property
    def score(self) -> float:
        scores = [turn.score.value if turn.score else 0.0 for turn in self.turns]
        return sum(scores) / len(scores) if scores else 0.0


@dataclass
class Report:
    url: str
    model: str
    seed: int
    plumbing: bool
    threshold: float | None
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(case.score for case in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def errors(self) -> list[str]:
        return [f"{case.name}: {turn.error}" for case in self.cases for turn in case.turns if turn.error]

    @property
    def passed(self) -> bool:
        if not all(case.arrived for case in self.cases):
            return False
        if self.plumbing or self.threshold is None:
            return True
        return self.total >= self.threshold

    def to_json(self) -> dict:
        cases = []
        for case in self.cases:
            turns = []
            for turn in case.turns:
                item = asdict(turn)
                item["arrived"] = turn.arrived
                item["score"] = None if turn.score is None else {"value": turn.score.value, "reason": turn.score.reason}
                turns.append(item)
            entry = {
                "name": case.name,
                "title": case.title,
                "truth": case.truth,
                "arrived": case.arrived,
                "turns": turns,
            }
            if not self.plumbing:
                entry["score"] = round(case.score, 4)
            cases.append(entry)
        result = {
            "url": self.url,
            "model": self.model,
            "seed": self.seed,
            "mode": "plumbing" if self.plumbing else "scored",
            "cases": cases,
            "passed": self.passed,
        }
        if not self.plumbing:
            result["total"] = round(self.total, 4)
            result["threshold"] = self.threshold
        return result


def image_url(case: Case) -> str:
    return "data:image/png;base64," + base64.b64encode(case.png()).decode()


def evaluate(
    client: openai.OpenAI,
    model: str,
    cases: list[Case],
    report: Report,
    max_tokens: int,
    temperature: float,
    on_turn: Callable[[CaseResult, TurnResult], None] | None = None,
) -> Report:
    for case in cases:
        result = CaseResult(case.name, case.title, case.truth)
        report.cases.append(result)
        messages: list[dict] = []
        for index, turn in enumerate(case.turns):
            content: list[dict] = [{"type": "image_url", "image_url": {"url": image_url(case)}}] if index == 0 else []
            content.append({"type": "text", "text": turn.question})
            messages.append({"role": "user", "content": content})
            outcome = TurnResult(turn.question, wants_json=turn.wants_json)
            started = time.monotonic()
            try:
                response = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=max_tokens, temperature=temperature
                )
                outcome.answer = response.choices[0].message.content
                outcome.completion_tokens = response.usage.completion_tokens if response.usage else 0
            except openai.APIStatusError as exc:
                outcome.error = f"the server answered {exc.status_code}: {_message(exc)}"
            except openai.APIError as exc:
                outcome.error = f"no answer: {exc}"
            outcome.seconds = time.monotonic() - started
            if not isinstance(outcome.answer, str):
                outcome.error = outcome.error or f"the answer is not text: {outcome.answer!r}"
                outcome.answer = ""
            if not report.plumbing:
                outcome.score = turn.check(outcome.answer) if not outcome.error else Score(0.0, outcome.error)
            result.turns.append(outcome)
            if on_turn is not None:
                on_turn(result, outcome)
            if outcome.error:
                break  # a follow-up needs the answer before it
            messages.append({"role": "assistant", "content": outcome.answer})
    return report


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("message") or body.get("error", {}).get("message") or str(exc)


# --- output -------------------------------------------------------------------------------------


def describe_turn(case: CaseResult, turn: TurnResult, plumbing: bool) -> str:
    number = case.turns.index(turn) + 1
    head = f"  {case.name} turn {number}{' (JSON)' if turn.wants_json else ''}: "
    if turn.error:
        return head + "FAILED, " + turn.error
    if plumbing:
        state = "answer arrived" if turn.arrived else "no generated tokens"
        return head + f"{state} ({turn.completion_tokens} tokens, {len(turn.answer)} chars, {turn.seconds:.1f} s)"
    return head + f"{turn.score.value:.2f}  {turn.score.reason}"


def summary(report: Report) -> str:
    lines = []
    if report.plumbing:
        answered = sum(turn.arrived for case in report.cases for turn in case.turns)
        asked = sum(len(case.turns) for case in report.cases)
        lines.append(
            f"plumbing: {answered}/{asked} answers arrived in {len(report.cases)} cases "
            f"(answers not scored: --plumbing)"
        )
    else:
        width = max(len(case.name) for case in report.cases) if report.cases else 4
        lines.append(f"{'case':<{width}}  score  truth")
        for case in report.cases:
            lines.append(f"{case.name:<{width}}  {case.score:5.2f}  {case.truth}")
        verdict = ""
        if report.threshold is not None:
            verdict = f"  (threshold {report.threshold:.2f}: {'pass' if report.total >= report.threshold else 'FAIL'})"
        lines.append(f"{'total':<{width}}  {report.total:5.2f}{verdict}")
    if report.errors:
        lines.append(f"{len(report.errors)} request(s) failed: " + "; ".join(report.errors))
    return "\n".join(lines)


def save(report: Report, cases: list[Case], folder: Path) -> None:
    """The images and the whole report (questions, answers, scores), for a person to look at."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (folder / f"{case.name}.png").write_bytes(case.png())
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
