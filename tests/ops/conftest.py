"""A deployed test host for the operator tasks: site.yml once per module, the service on the tiny model
listening on the host's loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.deploy import VaultSecrets, run_playbook
from tests.ops.operator import HOST_INDEX, HOST_NAME, INVENTORY, LOGS, Deployed


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
