"""scripts/follow_up_bench.py: a conversation turn after turn, each turn's first token and what it read again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def turns(tiny_model_dir: Path, image_cache_size: int) -> list[dict]:
    command = [sys.executable, "scripts/follow_up_bench.py", "--model", str(tiny_model_dir), "--device", "cpu"]
    command += ["--turns", "3", "--answer-tokens", "8", "--static-cache-tokens", "512"]
    command += ["--image-cache-size", str(image_cache_size)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_follow_ups_read_only_their_new_tokens_and_the_image_once(tiny_model_dir):
    reported = turns(tiny_model_dir, image_cache_size=8)
    assert [turn["turn"] for turn in reported] == [1, 2, 3]
    assert reported[0]["tokens_reused"] == 0
    for before, turn in zip(reported, reported[1:]):
        # the turn before's prompt at least, and none of the new question
        assert before["prompt_tokens"] <= turn["tokens_reused"] < turn["prompt_tokens"]
    assert [turn["images_encoded"] for turn in reported] == [1, 1, 1]
    assert all(turn["first_token_ms"] > 0 and turn["prepare_ms"] > 0 for turn in reported)


def test_without_an_image_cache_every_turn_is_read_whole(tiny_model_dir):
    reported = turns(tiny_model_dir, image_cache_size=0)
    assert [turn["tokens_reused"] for turn in reported] == [0, 0, 0]
    assert [turn["images_encoded"] for turn in reported] == [1, 2, 3]
