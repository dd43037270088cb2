"""A real `vlmkit serve` process on a free loopback port, for tests.

VLMKIT_TEST_BACKEND picks the backend path the suites serve with: transformers (default: CPU or CUDA,
fp32/bf16), transformers-bf16 and unsloth-4bit (CUDA, run on the GPU machine), transformers-4bit
(bitsandbytes).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from tests.lab.paths import REPO_ROOT
from tests.lab.processes import start_process, stop_process
from tests.lab.waiting import wait_until

API_KEY = "test-key-123"

BACKENDS = {
    "transformers": {"backend": "transformers"},
    "transformers-bf16": {"backend": "transformers", "device": "cuda", "dtype": "bfloat16"},
    "transformers-4bit": {"backend": "transformers", "load_in_4bit": True},
    "unsloth-4bit": {"backend": "unsloth", "device": "cuda", "load_in_4bit": True},
}


def backend_config() -> dict:
    """The server settings of the backend VLMKIT_TEST_BACKEND names."""
    return dict(BACKENDS[os.environ.get("VLMKIT_TEST_BACKEND", "transformers")])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        config: dict,
        workdir: Path,
        env: dict[str, str] | None = None,
        module: str = "inference.cli",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`module`: what `python -m` runs with `serve --config FILE` and `extra_args` (a test's stand-in
        entry point may wrap it), from the checkout's root."""
        self.module = module
        self.extra_args = extra_args
        self.port = config.setdefault("port", free_port())
        config.setdefault("host", "127.0.0.1")
        self.config_file = workdir / f"config-{self.port}.yaml"
        self.config_file.write_text(
            yaml.safe_dump({key: str(value) if isinstance(value, Path) else value for key, value in config.items()})
        )
        self.log_file = workdir / f"server-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.process = start_process(
            [sys.executable, "-m", self.module, "serve", "--config", str(self.config_file), *self.extra_args],
            self.log_file,
            env=self.env,
            cwd=REPO_ROOT,
        )
        return self

    def wait_live(self, timeout: float = 30) -> None:
        self._wait(lambda response: response.status_code == 200, "/health/live", timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait(lambda response: response.status_code == 200, "/health/ready", timeout)

    def _wait(self, ok, path: str, timeout: float) -> None:
        def answered() -> bool:
            try:
                return ok(httpx.get(self.base_url + path, timeout=2))
            except httpx.TransportError:
                return False

        def exited() -> str | None:
            if self.process.poll() is not None:
                return f"the server exited with {self.process.returncode}:\n{self.log()}"
            return None

        wait_until(answered, timeout, lambda: f"{path} to answer:\n{self.log()}", interval=0.05, give_up=exited)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM by PID, SIGKILL after `timeout` s; the exit status (0 when never started)."""
        if self.process is None:
            return 0
        return stop_process(self.process, timeout=timeout)


@contextlib.contextmanager
def running_server(config: dict, workdir: Path) -> Iterator[ServerProcess]:
    """A started server, ready to answer; terminated (SIGTERM, by PID) when the block ends."""
    process = ServerProcess(config, workdir).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()
