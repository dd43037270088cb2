"""What a deploy drives against test hosts: vault secrets, ansible-playbook, the smoke suite.

Used by the deploy, operations, fleet and GPU-stage suites and by `python -m tests.lab up`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.paths import CACHE_DIR, REPO_ROOT

INVENTORY = REPO_ROOT / "inventory" / "test" / "hosts.yml"
SECRETS_DIR = CACHE_DIR / "secrets"


# --- secrets -------------------------------------------------------------------------------------


@dataclass
class VaultSecrets:
    """The deploy's secrets in an ansible-vault file, as a real deploy keeps them.

    The API key and a stand-in HF token are random per directory; the vault password file sits
    beside them (0600). Tests check that neither secret shows up in any Ansible output.
    """

    directory: Path = SECRETS_DIR
    api_key: str = ""
    hf_token: str = ""

    @property
    def vault_file(self) -> Path:
        return self.directory / "vault.yml"

    @property
    def password_file(self) -> Path:
        return self.directory / "vault-password"

    def ensure(self) -> VaultSecrets:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = self.directory / "plain.json"
        if not keys.exists():
            keys.write_text(
                json.dumps({"api_key": secrets.token_urlsafe(24), "hf_token": "hf_" + secrets.token_hex(16)})
            )
            keys.chmod(0o600)
            self.vault_file.unlink(missing_ok=True)
        values = json.loads(keys.read_text())
        self.api_key, self.hf_token = values["api_key"], values["hf_token"]
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_hex(32) + "\n")
            self.password_file.chmod(0o600)
            self.vault_file.unlink(missing_ok=True)
        if not self.vault_file.exists():
            self.vault_file.write_text(f"vault_vlmkit_api_key: {self.api_key}\nvault_hf_token: {self.hf_token}\n")
            self.vault_file.chmod(0o600)
            subprocess.run(
                [ansible_tool("ansible-vault"), "encrypt", "--vault-password-file", str(self.password_file), str(self.vault_file)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        return self

    def values(self) -> list[str]:
        return [self.api_key, self.hf_token]


# --- ansible-playbook ----------------------------------------------------------------------------


@dataclass
class PlaybookRun:
    playbook: str
    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(host["changed"] for host in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(host["failed"] + host["unreachable"] for host in self.recap.values())

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported changed (for a readable idempotence failure)."""
        names, current = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                current = line
            elif line.startswith("changed:"):
                names.append(current)
        return names


def ansible_tool(name: str) -> str:
    """An Ansible command from this virtual environment when it is not on PATH."""
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def run_playbook(
    playbook: str,
    vault: VaultSecrets,
    inventory: Path = INVENTORY,
    extra_args: tuple[str, ...] = (),
    log: Path | None = None,
    timeout: float = 3600,
) -> PlaybookRun:
    """playbooks/`playbook` with the vault's secrets, output kept whole."""
    vault_args = ("-e", f"@{vault.vault_file}", "--vault-password-file", str(vault.password_file))
    return ansible_playbook(f"playbooks/{playbook}", inventory, (*vault_args, *extra_args), log, timeout)


def ansible_playbook(
    playbook: str, inventory: Path, args: tuple[str, ...] = (), log: Path | None = None, timeout: float = 3600
) -> PlaybookRun:
    """ansible-playbook from the repository root (so ansible.cfg applies), without colours; output kept whole,
    and written to `log` when given."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    command = [ansible_tool("ansible-playbook"), "-i", str(inventory), playbook, *args]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    return PlaybookRun(Path(playbook).name, result.returncode, output, time.monotonic() - started, parse_recap(output))


def play_on_this_machine(
    directory: Path, plays: list[dict], extra_vars: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`plays` run by Ansible on localhost with a local connection (no host: what the roles' own defaults,
    vars and tasks decide), with the repository's ansible.cfg and roles and Ansible's JSON output."""
    playbook = directory / "play.yml"
    playbook.write_text(json.dumps(plays))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
    )
    command = [ansible_tool("ansible-playbook"), "-c", "local", str(playbook)]
    command += ["-e", json.dumps(extra_vars)] if extra_vars else []
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    section = output.rpartition("PLAY RECAP")[2]
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", section, re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


def run_smoke(
    host: str, inventory: Path = INVENTORY, extra_args: tuple[str, ...] = (), timeout: float = 900
) -> subprocess.CompletedProcess:
    """The testinfra smoke suite against one inventory host, in a separate pytest process."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", "tests/smoke", f"--hosts=ansible://{host}", f"--ansible-inventory={inventory}",
        "-p", "no:cacheprovider", "-q", "-rA", "--no-header",
    ]  # fmt: skip
    return subprocess.run(
        [*command, *extra_args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
