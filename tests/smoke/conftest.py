"""Smoke suite (pytest-testinfra) for a deployed host; collected only when --hosts is given.

    pytest tests/smoke --hosts=ansible://HOST --ansible-inventory=inventory/NAME/hosts.yml
    ansible-playbook -i inventory/NAME/hosts.yml playbooks/smoke.yml

Everything the checks need is read from the host itself (the deploy manifest, config.yaml, the
unit), so the suite works against any inventory. The lock file compared with the host's
environment is this checkout's requirements/PROFILE.txt: a host deployed from another commit, or
changed by hand since, fails.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.lab.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vlmkit smoke")
    group.addoption("--vlmkit-unit", default="vlmkit", help="systemd unit of the service (default: vlmkit)")
    group.addoption("--vlmkit-config-dir", default="/etc/vlmkit", help="folder of config.yaml and the env file")
    group.addoption("--vlmkit-manifest", default="/var/lib/vlmkit/manifest.json", help="deploy manifest on the host")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # A bare `pytest` run has no host to check: leave this folder alone unless --hosts is given.
    if not config.getoption("hosts", default=None):
        return True
    return None


@dataclass
class Deployment:
    """What the deploy put on the host, as the host itself records it."""

    host: object
    unit: str
    config_dir: str
    manifest: dict
    config: dict

    @property
    def env_path(self) -> str:
        return self.manifest["environment"]["path"]

    @property
    def python(self) -> str:
        return f"{self.env_path}/bin/python"

    @property
    def profile(self) -> str:
        return self.manifest["profile"]

    @property
    def base_url(self) -> str:
        address = self.config.get("host", "127.0.0.1")
        if address in ("0.0.0.0", "::"):
            address = "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        return f"http://{address}:{self.config.get('port', 8000)}"

    @property
    def env_file(self) -> str:
        return f"{self.config_dir}/{self.unit}.env"

    def run_python(self, code: str, *args: str):
        """Run code with the environment's interpreter on the host (as root: it may read the env file)."""
        command = " ".join(shlex.quote(part) for part in (self.python, "-c", code, *args))
        with self.host.sudo():
            return self.host.run(command)

    def request(
        self, method: str, path: str, body: dict | None = None, auth: str = "key", timeout: float = 120
    ) -> tuple[int, str]:
        """An HTTP request made on the host. auth: "key" (the deployed key, read there), "none", "wrong"."""
        result = self.run_python(
            HTTP_SNIPPET,
            method,
            self.base_url + path,
            json.dumps(body) if body is not None else "",
            auth,
            self.env_file,
            str(timeout),
        )
        assert result.rc == 0, f"request failed to run: {result.stderr}"
        answer = json.loads(result.stdout)
        return answer["status"], answer["body"]

    def wait_ready(self, timeout: float = 180) -> float:
        def ready() -> bool:
            try:
                return self.request("GET", "/health/ready", auth="none", timeout=5)[0] == 200
            except AssertionError:
                return False

        started = time.monotonic()
        wait_until(ready, timeout, f"{self.base_url}/health/ready to answer 200", interval=2)
        return time.monotonic() - started


# Runs on the host. The key is read there from the env file: it never crosses a command line.
HTTP_SNIPPET = r"""
import json, sys, urllib.request, urllib.error
method, url, body, auth, env_file, timeout = sys.argv[1:7]
headers = {"Content-Type": "application/json"}
if auth != "none":
    key = ""
    for line in open(env_file):
        if line.startswith("VLMKIT_API_KEY="):
            key = line.strip().split("=", 1)[1]
    headers["Authorization"] = "Bearer " + (key if auth == "key" else "not-the-key")
request = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=float(timeout)) as answer:
        status, text = answer.status, answer.read().decode()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read().decode()
except OSError as error:
    status, text = 0, str(error)
print(json.dumps({"status": status, "body": text}))
"""


@pytest.fixture(scope="module")
def deployment(host, request) -> Deployment:
    options = request.config.option
    with host.sudo():
        manifest_file = host.file(options.vlmkit_manifest)
        assert manifest_file.exists, f"{options.vlmkit_manifest} is missing: was this host deployed with site.yml?"
        manifest = json.loads(manifest_file.content_string)
        config = yaml.safe_load(host.file(f"{options.vlmkit_config_dir}/config.yaml").content_string) or {}
    return Deployment(host, options.vlmkit_unit, options.vlmkit_config_dir, manifest, config)
