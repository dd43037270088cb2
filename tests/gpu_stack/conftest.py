"""Fixtures for the GPU-stage tests: hosts vlmkit-gpu-41..49, the stand-in NVIDIA mirror, a runner
(tests/gpu_stack/stage.py). Run host-booting tests under the shared lock:
flock /tmp/vlmkit-hosts.lock python -m pytest tests/gpu_stack
"""

from __future__ import annotations

import os

import pytest

from tests.gpu_stack.stage import booted_stage
from tests.gpu_stack.standin import ForwardProxy, StandinBuilder, StandinServer, missing_tools
from tests.lab.hosts import BRIDGE_ADDRESS


@pytest.fixture(scope="session")
def standin(host_environment, tmp_path_factory):
    """The stand-in NVIDIA mirror (apt repository, runfile, cuDNN archive) served on the bridge address."""
    missing = missing_tools()
    if missing:
        reason = "the stand-in NVIDIA mirror needs " + ", ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " -- CI=true: failing instead of skipping", pytrace=False)
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("standin")
    server = StandinServer(base / "www", str(BRIDGE_ADDRESS)).start()
    builder = StandinBuilder(base / "www", base / "work")
    builder.build(os.uname().release, server.url + "/" + "compute/cuda/repos/debian12/x86_64")
    server.offline = builder.offline
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(standin):
    """An HTTP proxy on the bridge address that forwards to the stand-in mirror only."""
    forward = ForwardProxy(str(BRIDGE_ADDRESS), standin.url).start()
    try:
        yield forward
    finally:
        forward.stop()


@pytest.fixture
def gpu_stage(host_environment, standin, request, tmp_path):
    """A fresh host (name and index from the test's `gpu_host` marker) and a runner for gpu.yml on it."""
    marker = request.node.get_closest_marker("gpu_host")
    name, index = marker.args if marker else ("vlmkit-gpu-42", 42)
    with booted_stage(host_environment, standin, name, index, tmp_path) as stage:
        yield stage


@pytest.fixture(scope="module")
def shared_stage(host_environment, standin, tmp_path_factory):
    """One host (vlmkit-gpu-41) for the tests of a module that only read the host or reset what they set."""
    with booted_stage(host_environment, standin, "vlmkit-gpu-41", 41, tmp_path_factory.mktemp("inventory")) as stage:
        yield stage


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu_host(name, index): which vlmkit-gpu-N host (41-49) a GPU-stage test boots")
