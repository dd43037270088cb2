"""The published configs of the real Llama 3.2 Vision models, under their repo names.

The files stay in tests/planner/fixtures, where roles, inventories and docs name them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.lab.paths import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "planner" / "fixtures"
META_11B = "meta-llama/Llama-3.2-11B-Vision-Instruct"
META_90B = "meta-llama/Llama-3.2-90B-Vision-Instruct"
BNB_11B = "unsloth/Llama-3.2-11B-Vision-Instruct-bnb-4bit"
BNB_90B = "unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit"


def fixture_dir(repo_id: str) -> Path:
    return FIXTURES / repo_id


def fixture_config(repo_id: str) -> dict:
    return json.loads((fixture_dir(repo_id) / "config.json").read_text())
