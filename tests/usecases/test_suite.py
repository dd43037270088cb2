"""`vlmkit usecases` end to end: plumbing against a real server on the tiny model, scoring and the
threshold against that model (which scores ~0) and against a stand-in that answers like a good model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference.usecases.cases import DEFAULT_SEED, build_cases
from tests.lab.server import API_KEY

CASES = ["receipt", "chart", "homework", "nutrition", "tire-pressure"]


def usecases(url: str, *args: str, key: str = API_KEY, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMKIT_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "inference.cli", "usecases", "--url", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_plumbing_mode_gets_an_answer_to_every_question_from_the_tiny_model(tiny_server, tmp_path):
    run = usecases(tiny_server.base_url + "/v1", "--plumbing", "--json", "--save", str(tmp_path / "report"))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["mode"] == "plumbing" and report["passed"] and report["model"] == "tiny-mllama"
    assert [case["name"] for case in report["cases"]] == CASES
    turns = [turn for case in report["cases"] for turn in case["turns"]]
    assert len(turns) == 8 and all(turn["arrived"] and turn["completion_tokens"] >= 1 for turn in turns)
    json_turn = next(turn for turn in turns if turn["wants_json"])
    assert isinstance(json_turn["answer"], str)  # the JSON question returns text (the tiny model's is noise)
    assert "total" not in report and all("score" not in case for case in report["cases"])
    saved = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert saved == sorted([f"{name}.png" for name in CASES] + ["report.json"])


def test_plumbing_mode_fails_when_the_server_refuses_the_requests(tiny_server):
    run = usecases(
        tiny_server.base_url + "/v1", "--plumbing", "--only", "receipt", "--model", "tiny-mllama", key="not-the-key"
    )
    assert run.returncode == 1
    assert "401" in run.stdout and "FAILED" in run.stdout


def test_a_threshold_fails_the_run_when_the_model_answers_badly(tiny_server):
    # The tiny random model cannot read receipts: scored, it gets ~0 and a 0.5 threshold fails.
    run = usecases(tiny_server.base_url + "/v1", "--max-tokens", "16", "--threshold", "0.5")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "threshold 0.50: FAIL" in run.stdout
    without = usecases(tiny_server.base_url + "/v1", "--max-tokens", "16", "--only", "receipt")
    assert without.returncode == 0, without.stdout  # no threshold: scores are reported, the run passes
    assert "receipt" in without.stdout and "total" in without.stdout


class _GoodModel(BaseHTTPRequestHandler):
    """Answers each of the suite's questions with that turn's ideal answer, as a good model would."""

    answers = {turn.question: turn.ideal for case in build_cases(DEFAULT_SEED) for turn in case.turns}
    conversations: list[list[dict]] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(
            {"object": "list", "data": [{"id": "good-model", "object": "model", "created": 0, "owned_by": "test"}]}
        )

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.conversations.append(request["messages"])
        question = request["messages"][-1]["content"][-1]["text"]
        answer = self.answers.get(question, "I don't know.")
        self._send(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "good-model",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
            }
        )


@pytest.fixture
def good_model():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GoodModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _GoodModel.conversations.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_good_model_passes_the_threshold_with_every_case_scored_one(good_model):
    run = usecases(good_model, "--threshold", "0.9", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["total"] == 1.0 and report["passed"]
    assert {case["name"]: case["score"] for case in report["cases"]} == {name: 1.0 for name in CASES}


def test_follow_up_questions_carry_the_image_and_the_previous_answer(good_model):
    run = usecases(good_model, "--only", "receipt")
    assert run.returncode == 0, run.stdout
    first, follow_up = _GoodModel.conversations
    assert [part["type"] for part in first[0]["content"]] == ["image_url", "text"]
    assert [message["role"] for message in follow_up] == ["user", "assistant", "user"]
    assert follow_up[0] == first[0]  # the same image, sent once, at the start of the conversation
    assert follow_up[1]["content"].startswith("The total charge is $")
    assert [part["type"] for part in follow_up[2]["content"]] == ["text"]


def test_an_unknown_case_is_refused(good_model):
    run = usecases(good_model, "--only", "fridge")
    assert run.returncode == 2 and "no such case: fridge" in run.stderr
