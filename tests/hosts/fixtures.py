"""Shared fixtures for tests that boot disposable systemd test hosts (marker: hosts).

Registered for the whole suite by tests/conftest.py. They need root, debootstrap, systemd-nspawn
(systemd-container) and apt-cacher-ng. Where those are missing the tests are skipped with the reason,
except under CI=true, where they fail: CI must not pass by skipping the deploy.
Host indices (and so addresses 10.213.0.N+10): deploy 1-9, operations 21-29, fleet 31-39, GPU roles 41-49.
"""

from __future__ import annotations

import os

import pytest

from tests.deploy.harness import ModelMirror
from tests.hosts import TestHostEnvironment, missing_tools


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
