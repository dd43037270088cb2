"""The operator's side of the ops tests: the deployed host vlmkit-ops-1 (10.213.0.31, inventory/test-ops),
`vlmkit ops` run as an operator runs it, and long-running tasks in the background."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from tests.lab.hosts import TestHost
from tests.lab.paths import CACHE_DIR, REPO_ROOT
from tests.lab.processes import stop_process
from tests.lab.waiting import wait_until

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
        result = subprocess.run(
            [sys.executable, "-m", "inference.cli", "ops", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or ops_env(),
        )
        self.outputs.append(result.stdout + result.stderr)
        return result

    def start(self, *args: str) -> Background:
        """A long-running task (tunnel, logs --follow) in the background; lines collected as they come."""
        process = subprocess.Popen(
            [sys.executable, "-m", "inference.cli", "ops", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ops_env(),
        )
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
        def shown() -> str | None:
            return next((line for line in self.lines[after:] if text in line), None)

        def ended() -> str | None:
            if self.process.poll() is not None and not self._reader.is_alive():
                return f"the task ended ({self.process.returncode})"
            return None

        return wait_until(
            shown,
            timeout,
            lambda: f"{text!r} to show:\n{''.join(self.lines)[-3000:]}",
            interval=0.1,
            give_up=lambda: shown() is None and ended(),
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the process we started, by its PID."""
        stop_process(self.process, timeout=timeout, sig=sig)
        self._reader.join(10)
        self.sink.append("".join(self.lines))
        return self.process.returncode
