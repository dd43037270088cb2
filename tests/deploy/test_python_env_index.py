"""python_env's pip arguments, as Ansible evaluates the role's own defaults and vars: no index unless one is set.

A host's pip.conf or PIP_INDEX_URL (a regional mirror) keeps working only if the role passes no
--index-url of its own; pip adds command-line --extra-index-url to the configured ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.deploy import play_on_this_machine

ROLE = Path(__file__).resolve().parents[2] / "roles" / "python_env"


def pip_source_args(tmp_path: Path, **extra_vars: str) -> list[str]:
    plays = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [{"ansible.builtin.debug": {"var": "python_env_source_args"}}],
        }
    ]
    result = play_on_this_machine(tmp_path, plays, extra_vars, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    task = json.loads(result.stdout)["plays"][0]["tasks"][0]
    return task["hosts"]["localhost"]["python_env_source_args"]


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_no_index_is_passed_to_pip_unless_one_is_configured(tmp_path, profile):
    arguments = pip_source_args(tmp_path, python_env_profile=profile)
    assert not [argument for argument in arguments if argument.startswith("--index-url")]
    if profile == "gpu":
        assert arguments == []  # torch's CUDA build and everything else: from pip's own default or config


def test_a_configured_index_is_passed_to_pip(tmp_path):
    arguments = pip_source_args(tmp_path, python_env_profile="gpu", python_env_index_url="http://127.0.0.1:3141/simple")
    assert arguments[:2] == ["--index-url", "http://127.0.0.1:3141/simple"]
