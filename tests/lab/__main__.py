"""Deploy vlmkit to a local disposable test host: `python -m tests.lab up|key|url|down` (as root).

up     boots vlmkit-test-1 (inventory/test), publishes the tiny model on a local mirror, runs
       playbooks/site.yml in the cpu profile, and prints the URL and a working example request.
       The host, apt cache and mirror keep running; the mirror is only needed while deploying.
down   stops and removes them (by the PIDs recorded at `up`).
url    prints the deployed service's base URL; key prints its API key (for $VLMKIT_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tests.lab.deploy import VaultSecrets, run_playbook
from tests.lab.hosts import TestHost, TestHostEnvironment
from tests.lab.olah_mirror import ModelMirror
from tests.lab.paths import CACHE_DIR
from tests.lab.processes import stop_pid

STATE = CACHE_DIR / "run" / "deploy-state.json"
HOST_NAME, HOST_INDEX = "vlmkit-test-1", 1


def up() -> int:
    env = TestHostEnvironment()
    mirror = ModelMirror()
    started = time.monotonic()
    env.start()
    host = env.boot(HOST_NAME, HOST_INDEX)
    mirror.start()
    STATE.write_text(json.dumps({"pids": [host.process.pid, mirror.process.pid, env.apt_cache.process.pid]}))
    print(f"{host.name} booted at {host.ip}; deploying (first run builds the wheelhouse: a few minutes)...", flush=True)
    vault = VaultSecrets().ensure()
    run = run_playbook("site.yml", vault, log=CACHE_DIR / "run" / "site.log")
    print(run.output[-4000:] if run.returncode else _summary(run.output))
    if run.returncode != 0:
        print(f"site.yml failed (rc {run.returncode}); full log: {CACHE_DIR / 'run' / 'site.log'}", file=sys.stderr)
        return 1
    print(
        f"Deployed in {time.monotonic() - started:.0f} s. The API key: export VLMKIT_API_KEY=$(.venv/bin/python -m tests.lab key)"
    )
    print("Stop everything with: .venv/bin/python -m tests.lab down")
    return 0  # host, mirror and apt cache keep running until `down`


def _summary(output: str) -> str:
    """The play's closing message (URL and example request) and the recap."""
    lines = output.splitlines()
    start = max((i for i, line in enumerate(lines) if "Show where the service answers" in line), default=0)
    return "\n".join(lines[start : start + 12] + lines[-4:])


def down() -> int:
    if STATE.exists():
        for pid in json.loads(STATE.read_text()).get("pids", []):
            stop_pid(pid)
        STATE.unlink()
    env = TestHostEnvironment()
    TestHost(name=HOST_NAME, index=HOST_INDEX, base=env.base).destroy()
    env.bridge.created = True
    env.bridge.down()
    print("test host, mirror, apt cache and bridge are gone")
    return 0


def url() -> int:
    """Print the deployed service's base URL (inventory/test sets no other port than the default)."""
    print(f"http://{TestHost(name=HOST_NAME, index=HOST_INDEX, base=None).ip}:8000")
    return 0


def key() -> int:
    """Print the test deployment's API key, for VLMKIT_API_KEY=$(python -m tests.lab key)."""
    print(VaultSecrets().ensure().api_key)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("up", "down", "url", "key"))
    return {"up": up, "down": down, "url": url, "key": key}[parser.parse_args().action]()


if __name__ == "__main__":
    sys.exit(main())
