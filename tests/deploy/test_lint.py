"""ansible-lint at the production profile over every role, playbook and inventory (CI enforces it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_roles_playbooks_and_inventories_pass_ansible_lint_production_profile():
    lint = shutil.which("ansible-lint") or str(Path(sys.executable).with_name("ansible-lint"))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        NO_COLOR="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    result = subprocess.run(
        [lint, "--profile", "production", "--strict", "--offline", "roles", "playbooks", "inventory"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"ansible-lint found problems:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
