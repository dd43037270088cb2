"""A deployed test host for the operator tasks: vlmkit-ops-1 (10.213.0.31, inventory/test-ops), site.yml
once per module, the service on the tiny model listening on the host's loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.harness import VaultSecrets, run_playbook
from tests.hosts.nspawn import CACHE_DIR, REPO_ROOT, TestHost

HOST_NAME, HOST_INDEX = "vlmkit-ops-1", 21
INVENTORY = REPO_ROOT / "inventory" / "test-ops" / "hosts.yml"
LOGS = CACHE_DIR / "run" / "ops"


@dataclass
class Deployed:
    host: TestHost
    api_key: str
    outputs: list[str] = field(default_factory=list)  # everything the tasks printed, checked for the key

    def ops(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        """`vlmkit ops ...` as an operator runs it from the checkout, without VLMKIT_API_KEY set."""
        result = subprocess.run([sys.executable, "-m", "inference.cli", "ops", *args], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=timeout, env=env or ops_env())
        self.outputs.append(result.stdout + result.stderr)
        return result

    def start(self, *args: str) -> Background:
        """A long-running task (tunnel, logs --follow) in the background; lines collected as they come."""
        process = subprocess.Popen([sys.executable, "-m", "inference.cli", "ops", *args], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ops_env())
        return Background(process, self.outputs)


def ops_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "VLMKIT_API_KEY"}
    env["VLMKIT_INVENTORY"] = str(INVENTORY.relative_to(REPO_ROOT))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Background:
    def __init__(self, process: subprocess.Popen, sink: list[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.sink = sink
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} did not show within {timeout} s:\n{''.join(self.lines)[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the process we started, by its PID."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(10)
        self.sink.append("".join(self.lines))
        return self.process.returncode


@pytest.fixture(scope="module")
def deployed(host_environment, model_mirror, tmp_path_factory):
    """vlmkit-ops-1 booted fresh and deployed with site.yml; destroyed at the end of the module."""
    vault = VaultSecrets(directory=tmp_path_factory.mktemp("ops-vault")).ensure()
    host = host_environment.boot(HOST_NAME, HOST_INDEX)
    try:
        run = run_playbook("site.yml", vault, inventory=INVENTORY, log=LOGS / "site.log")
        assert run.returncode == 0, "site.yml failed on the ops host:\n" + "\n".join(run.output.splitlines()[-60:])
        yield Deployed(host, vault.api_key)
    finally:
        host.destroy()
        host_environment.hosts.pop(HOST_NAME, None)


@pytest.fixture(scope="module")
def png_file(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("ops-images") / "photo.png"
    Image.new("RGB", (96, 64), (30, 120, 200)).save(path)
    return path
