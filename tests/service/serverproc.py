"""A real `vlmkit serve` process on a free loopback port, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, config: dict, workdir: Path, env: dict[str, str] | None = None,
                 module: str = "inference.cli") -> None:
        """`module`: what `python -m` runs with `serve --config FILE` (a test's stand-in entry point may wrap it)."""
        self.module = module
        self.port = config.setdefault("port", free_port())
        config.setdefault("host", "127.0.0.1")
        self.config_file = workdir / f"config-{self.port}.yaml"
        self.config_file.write_text(yaml.safe_dump({key: str(value) if isinstance(value, Path) else value
                                                    for key, value in config.items()}))
        self.log_file = workdir / f"server-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self._log = self.log_file.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--config", str(self.config_file)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )
        return self

    def wait_live(self, timeout: float = 30) -> None:
        self._wait(lambda response: response.status_code == 200, "/health/live", timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait(lambda response: response.status_code == 200, "/health/ready", timeout)

    def _wait(self, ok, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if ok(httpx.get(self.base_url + path, timeout=2)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self._log.close()


@contextlib.contextmanager
def running_server(config: dict, workdir: Path) -> Iterator[ServerProcess]:
    """A started server, ready to answer; terminated (SIGTERM, by PID) when the block ends."""
    process = ServerProcess(config, workdir).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()
