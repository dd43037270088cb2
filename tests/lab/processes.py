"""start_process / stop_process / stop_pid: how the lab starts a background process and stops it again,
always by the PID it started with."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.lab.waiting import WaitTimeout, wait_until


def start_process(command: Sequence[str], log: Path, append: bool = False, **popen) -> subprocess.Popen:
    """Start `command` in the background, stdin closed, stdout and stderr into `log` (kept for the failure
    messages); `popen` passes cwd, env, start_new_session, preexec_fn and the like through."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab" if append else "wb") as output:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, **popen
        )


def stop_process(
    process: subprocess.Popen | None, timeout: float = 30, sig: int = signal.SIGTERM, group: bool = False
) -> int | None:
    """Send `sig` (default SIGTERM) to a process we started, SIGKILL it after `timeout` s; its exit status.

    `group`: signal its whole process group (for a process started with start_new_session=True).
    """
    if process is None:
        return None
    if process.poll() is None:
        _signal(process.pid, sig, group)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(process.pid, signal.SIGKILL, group)
            process.wait(10)
    return process.returncode


def stop_pid(pid: int, timeout: float = 60) -> None:
    """The same for a PID recorded earlier by another command of ours (no Popen object left)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_until(lambda: not _alive(pid), timeout, f"process {pid} to exit")
    except WaitTimeout:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except ProcessLookupError:
        pass
