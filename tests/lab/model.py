"""tiny_model: the tiny random-weight Llama 3.2 Vision checkpoint with a real processor, built offline.

The one place the lab calls the checkpoint builder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.lab.paths import REPO_ROOT


def tiny_model(output: Path) -> Path:
    """The tiny checkpoint in `output`, built there unless a complete one already is; returns `output`.

    Built in a staging folder beside it and renamed, so an interrupted build never looks complete.
    """
    if (output / "config.json").exists():
        return output
    staging = output.with_name(output.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "inference.checkpoint_builder", "--shape", "tiny", "--output", str(staging)],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny model failed ({result.returncode}):\n{result.stderr[-3000:]}")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output
