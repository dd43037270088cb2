"""Command line for the test hosts: `python -m tests.hosts up|down|status` (as root).

up      build the base image if needed, start the bridge and apt cache, boot the host named in
        inventory/test/hosts.yml (vlmkit-test-1, 10.213.0.11); leaves it running.
down    stop and remove that host, the apt cache and the bridge (by the PIDs recorded at start).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from tests.hosts.nspawn import CACHE_DIR, SSH_KEY, TestHostEnvironment

STATE = CACHE_DIR / "run" / "cli-state.json"
HOST_NAME, HOST_INDEX = "vlmkit-test-1", 1


def up() -> int:
    env = TestHostEnvironment()
    started = time.monotonic()
    env.start()
    host = env.boot(HOST_NAME, HOST_INDEX)
    STATE.write_text(json.dumps({"apt_cache_pid": env.apt_cache.process.pid, "nspawn_pid": host.process.pid}))
    print(f"{host.name} is up at {host.ip} in {time.monotonic() - started:.1f} s")
    print(f"ssh -i {SSH_KEY} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@{host.ip}")
    # Leave the processes running: detach them from this interpreter.
    env.apt_cache.process = None
    host.process = None
    return 0


def down() -> int:
    env = TestHostEnvironment()
    if STATE.exists():
        state = json.loads(STATE.read_text())
        for key in ("nspawn_pid", "apt_cache_pid"):
            _terminate(state.get(key))
        STATE.unlink()
    host = env.hosts.setdefault(HOST_NAME, env_host(env))
    host.destroy()
    env.bridge.created = True
    env.bridge.down()
    print("test host, apt cache and bridge are gone")
    return 0


def env_host(env: TestHostEnvironment):
    from tests.hosts.nspawn import TestHost

    return TestHost(name=HOST_NAME, index=HOST_INDEX, base=env.base)


def _terminate(pid: int | None, timeout: float = 60) -> None:
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args()
    return {"up": up, "down": down}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
