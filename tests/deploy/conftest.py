"""Fixtures that boot disposable Debian hosts with systemd and deploy to them (marker: hosts).

They need root, debootstrap, systemd-nspawn (systemd-container) and apt-cacher-ng. Where those are
missing the tests are skipped with the reason, except under CI=true, where they fail: CI must not
pass by skipping the deploy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.deploy.harness import ModelMirror, VaultSecrets  # noqa: E402
from tests.hosts import TestHostEnvironment, missing_tools  # noqa: E402

TEST_HOST = ("vlmkit-test-1", 1)  # inventory/test/hosts.yml names it, at 10.213.0.11


def _require_host_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    reason = (
        "test hosts need " + ", ".join(missing)
        + " (apt-get install debootstrap systemd-container apt-cacher-ng, and run as root)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " -- CI=true: failing instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def host_environment():
    """Base image (built once, cached under .cache/test-hosts), bridge and apt cache."""
    _require_host_tools()
    environment = TestHostEnvironment()
    environment.start()
    try:
        yield environment
    finally:
        environment.stop()


@pytest.fixture(scope="session")
def model_mirror(host_environment):
    """The tiny Mllama checkpoint published on olah, listening on the bridge address."""
    mirror = ModelMirror()
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture(scope="session")
def vault_secrets(tmp_path_factory) -> VaultSecrets:
    """A fresh API key and stand-in HF token in an ansible-vault file, for this run only."""
    return VaultSecrets(directory=tmp_path_factory.mktemp("vault")).ensure()


@pytest.fixture
def fresh_host(host_environment):
    """A freshly booted host on a clean overlay of the base image; destroyed afterwards."""
    name, index = TEST_HOST
    host = host_environment.boot(name, index)
    try:
        yield host
    finally:
        host.destroy()
        host_environment.hosts.pop(name, None)
