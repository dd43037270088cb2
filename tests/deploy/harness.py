"""What a deploy test drives: test hosts, the model mirror on the bridge, vault secrets, ansible-playbook.

Used by tests/deploy/conftest.py and by `python -m tests.deploy` (deploy to a local test host by hand).
Traffic stays on this machine: the mirror and the apt cache listen on the bridge address only.
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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.hosts.nspawn import BRIDGE_ADDRESS, CACHE_DIR, REPO_ROOT, HostError

INVENTORY = REPO_ROOT / "inventory" / "test" / "hosts.yml"
MODEL_ORG, MODEL_NAME = "vlmkit-test", "tiny-mllama"
MIRROR_PORT = 8090  # inventory/test/group_vars/all.yml names it
SECRETS_DIR = CACHE_DIR / "secrets"


# --- the model mirror ----------------------------------------------------------------------------

def build_tiny_model(cache: Path = CACHE_DIR / "tiny-mllama") -> Path:
    """The tiny random Mllama checkpoint (inference.checkpoint_builder), built once and cached."""
    if not (cache / "config.json").exists():
        from inference.checkpoint_builder import build_checkpoint

        staging = cache.with_name(cache.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        build_checkpoint("tiny", staging)
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache)
    return cache


def publish_model(mirrors: Path, checkpoint: Path) -> str:
    """Put the checkpoint in an olah mirror tree as git repo MODEL_ORG/MODEL_NAME; returns its sha.

    Weights become LFS objects (pointer in git, content under .git/lfs), as on the hub.
    """
    from tests.download.conftest import build_repo  # the download tests' repo builder

    files, lfs = {}, {}
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            (lfs if path.suffix == ".safetensors" else files)[path.name] = path.read_bytes()
    shutil.rmtree(mirrors / "models" / MODEL_ORG / MODEL_NAME, ignore_errors=True)
    return build_repo(mirrors, MODEL_NAME, files, lfs).sha


@dataclass
class ModelMirror:
    """olah serving the tiny model offline on the bridge address, stopped by the PID it started with."""

    directory: Path = CACHE_DIR / "mirror"
    address: str = str(BRIDGE_ADDRESS)
    port: int = MIRROR_PORT
    process: subprocess.Popen | None = None
    sha: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def repo_id(self) -> str:
        return f"{MODEL_ORG}/{MODEL_NAME}"

    def start(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        mirrors = self.directory / "mirrors"
        mirrors.mkdir(parents=True)
        self.sha = publish_model(mirrors, build_tiny_model())
        (self.directory / "olah.toml").write_text(
            "[basic]\n"
            f'host = "{self.address}"\nport = {self.port}\n'
            f'repos-path = "{self.directory / "repos"}"\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{self.address}:{self.port}"\nmirror-lfs-netloc = "{self.address}:{self.port}"\n'
            f'mirrors-path = ["{mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        olah_cli = shutil.which("olah-cli") or str(Path(sys.executable).with_name("olah-cli"))
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("HF_")}
        with open(self.directory / "olah.log", "wb") as log:
            self.process = subprocess.Popen(
                [olah_cli, "-c", "olah.toml"], cwd=self.directory, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/models/{self.repo_id}/revision/main", timeout=2) as answer:
                    if json.load(answer).get("sha") == self.sha:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_tail = (self.directory / "olah.log").read_text(errors="replace")[-3000:]
                raise HostError(f"olah did not come up on {self.url}:\n{log_tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None


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
            keys.write_text(json.dumps({"api_key": secrets.token_urlsafe(24), "hf_token": "hf_" + secrets.token_hex(16)}))
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
                [_tool("ansible-vault"), "encrypt", "--vault-password-file", str(self.password_file), str(self.vault_file)],
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


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def run_playbook(
    playbook: str,
    vault: VaultSecrets,
    inventory: Path = INVENTORY,
    extra_args: tuple[str, ...] = (),
    log: Path | None = None,
    timeout: float = 3600,
) -> PlaybookRun:
    """ansible-playbook from the repository root (so ansible.cfg applies), output kept whole."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        _tool("ansible-playbook"), "-i", str(inventory), f"playbooks/{playbook}",
        "-e", f"@{vault.vault_file}", "--vault-password-file", str(vault.password_file), *extra_args,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    return PlaybookRun(playbook, result.returncode, output, time.monotonic() - started, parse_recap(output))


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    section = output.rpartition("PLAY RECAP")[2]
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", section, re.MULTILINE):
        recap[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return recap


def run_smoke(host: str, inventory: Path = INVENTORY, extra_args: tuple[str, ...] = (), timeout: float = 900) -> subprocess.CompletedProcess:
    """The testinfra smoke suite against one inventory host, in a separate pytest process."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", "tests/smoke", f"--hosts=ansible://{host}", f"--ansible-inventory={inventory}",
        "-p", "no:cacheprovider", "-q", "-rA", "--no-header",
    ]  # fmt: skip
    return subprocess.run([*command, *extra_args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
