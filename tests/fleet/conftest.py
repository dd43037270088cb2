"""The fleet the tests share: two inference hosts and a balancer, booted and deployed once per module.

The host environment and the model mirror come from the test lab (tests/lab/plugin.py); the wheelhouse is the
deploy tests' (.cache/deploy/wheelhouse-cpu, downloaded once per lock file).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet.harness import BALANCER_HOST, INFERENCE_HOSTS, INVENTORY, PORT, Balancer, http_json
from tests.lab.deploy import PlaybookRun, VaultSecrets, run_playbook
from tests.lab.hosts import TestHost
from tests.lab.paths import CACHE_DIR

LOGS = CACHE_DIR / "run" / "fleet"


@dataclass
class Fleet:
    hosts: dict[str, TestHost]
    balancer: Balancer
    vault: VaultSecrets
    deploy: PlaybookRun
    timings: dict[str, float]

    def playbook(
        self, playbook: str, log_name: str, extra_args: tuple[str, ...] = (), inventory: Path = INVENTORY
    ) -> PlaybookRun:
        run = run_playbook(
            playbook, self.vault, inventory=inventory, extra_args=extra_args, log=LOGS / f"{log_name}.log"
        )
        self.timings[log_name] = round(run.seconds, 1)
        for secret in self.vault.values():
            assert secret not in run.output, f"a secret showed up in the output of {playbook}"
        return run

    def ready(self, name: str) -> dict:
        """The host's own /health/ready (straight to the host, not through the balancer)."""
        status, body = http_json(f"http://{self.hosts[name].ip}:{PORT}/health/ready")
        return dict(body, http_status=status)

    @property
    def model(self) -> str:
        return http_json(f"{self.balancer.url}/health/ready")[1]["model"]


@pytest.fixture(scope="module")
def fleet(host_environment, model_mirror, tmp_path_factory):
    """Three fresh hosts; playbooks/fleet.yml deploys the service on two and HAProxy on the third."""
    LOGS.mkdir(parents=True, exist_ok=True)
    vault = VaultSecrets(directory=tmp_path_factory.mktemp("fleet-vault")).ensure()
    booted: dict[str, TestHost] = {}
    try:
        for name, index in (*INFERENCE_HOSTS, BALANCER_HOST):
            booted[name] = host_environment.boot(name, index)
        hosts = {name: booted[name] for name, _ in INFERENCE_HOSTS}
        fleet = Fleet(hosts, Balancer(booted[BALANCER_HOST[0]]), vault, None, {})  # type: ignore[arg-type]
        fleet.deploy = fleet.playbook("fleet.yml", "fleet-deploy")
        assert fleet.deploy.returncode == 0, "fleet.yml failed:\n" + "\n".join(fleet.deploy.output.splitlines()[-80:])
        yield fleet
        (LOGS / "timings.json").write_text(json.dumps(fleet.timings, indent=2) + "\n")
        print("fleet timings (s): " + ", ".join(f"{k}: {v}" for k, v in fleet.timings.items()))
    finally:
        balancer = booted.get(BALANCER_HOST[0])
        if balancer is not None:  # HAProxy's log (failed requests, health changes), for the record
            with contextlib.suppress(Exception):
                journal = balancer.ssh(
                    "journalctl --unit=haproxy --no-pager --output=short-precise", check=False
                ).stdout
                (LOGS / "haproxy.log").write_text(journal)
        for name, host in booted.items():
            host.destroy()
            host_environment.hosts.pop(name, None)
