"""ruff over every Python file of the repository, with the rules and layout of pyproject.toml (CI enforces it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def ruff(*arguments: str) -> subprocess.CompletedProcess[str]:
    # The venv's ruff first: pyproject pins its minor release, and another ruff on PATH may judge differently.
    own = Path(sys.executable).with_name("ruff")
    executable = str(own) if own.exists() else shutil.which("ruff")
    assert executable, "ruff is not installed: bash scripts/setup.sh installs it with the test tools"
    return subprocess.run(
        [executable, *arguments, "--no-cache", "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_COLOR="1"),
        timeout=300,
    )


def test_python_code_passes_ruff_lint_rules():
    result = ruff("check", "--output-format", "concise")
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"


def test_python_code_is_laid_out_by_ruff_format():
    result = ruff("format", "--check")
    assert result.returncode == 0, f"ruff format would change:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
