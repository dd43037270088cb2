"""The pytest fixtures every suite may use, registered for the whole suite by tests/conftest.py.

tiny_model_dir: the tiny checkpoint, built once per session. host_environment and model_mirror: for
the tests that boot disposable systemd test hosts (marker: hosts). Those need root, debootstrap,
systemd-nspawn (systemd-container) and apt-cacher-ng. Where those are missing the tests are skipped
with the reason, except under CI=true, where they fail: CI must not pass by skipping the deploy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab.hosts import TestHostEnvironment, missing_tools
from tests.lab.model import tiny_model
from tests.lab.olah_mirror import ModelMirror


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama 3.2 Vision checkpoint with a real processor, built offline."""
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny-mllama")


def _require_host_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    reason = (
        "test hosts need "
        + ", ".join(missing)
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
