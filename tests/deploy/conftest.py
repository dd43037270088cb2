"""Fixtures for the deploy tests; the host environment and model mirror come from the test lab (tests/lab/plugin.py)."""

from __future__ import annotations

import pytest

from tests.lab.deploy import VaultSecrets

TEST_HOST = ("vlmkit-test-1", 1)  # inventory/test/hosts.yml names it, at 10.213.0.11


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
