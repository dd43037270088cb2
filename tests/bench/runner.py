"""`vlmkit bench` run against a server as a subprocess, the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.lab.server import ServerProcess

API_KEY = "bench-key-123"


class BenchRun:
    def __init__(self, completed: subprocess.CompletedProcess, json_file: Path) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.report = json.loads(json_file.read_text()) if json_file.exists() else None


def run_bench(server: ServerProcess, workdir: Path, *args: str, api_key: str = API_KEY) -> BenchRun:
    """`vlmkit bench --url <server> --json <workdir>/report.json ARGS`, light on the CPU: small images."""
    json_file = workdir / "report.json"
    env = {**os.environ, "VLMKIT_API_KEY": api_key}
    env.pop("VLMKIT_URL", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference.cli",
            "bench",
            "--url",
            server.base_url + "/v1",
            "--json",
            str(json_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return BenchRun(completed, json_file)
