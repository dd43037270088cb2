"""The GPU unit's DeviceAllow= rules let CUDA open every NVIDIA node, on drivers old and new.

systemd resolves `DeviceAllow=char-NAME` by matching NAME (fnmatch) against the group names in the
"Character devices:" section of /proc/devices and allowing each matching major; a name the running
driver lacks allows nothing. With DevicePolicy=closed nothing else is allowed. So the rules are
checked against /proc/devices listings: proc-devices-580.txt was read on the lent H200 (driver
580.159.04, see docs/lab/gpu-host.md); proc-devices-535.txt is a stand-in, not read from a machine: the
layout of drivers before 545 reconstructed from their sources, where major 195 was registered as
"nvidia-frontend" (open-gpu-kernel-modules' nv-frontend.c, removed in 545).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

import jinja2
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE = REPO_ROOT / "roles" / "inference_service"
FIXTURES = Path(__file__).parent / "fixtures"

# The nodes CUDA (and nvidia-smi) open in a unit: (path, major name in /proc/devices per driver).
NODES_BY_DRIVER = {
    "580": {"/dev/nvidia0": "nvidia", "/dev/nvidiactl": "nvidiactl", "/dev/nvidia-uvm": "nvidia-uvm",
            "/dev/nvidia-uvm-tools": "nvidia-uvm", "/dev/nvidia-caps/nvidia-cap1": "nvidia-caps"},
    "535": {"/dev/nvidia0": "nvidia-frontend", "/dev/nvidiactl": "nvidia-frontend",
            "/dev/nvidia-uvm": "nvidia-uvm", "/dev/nvidia-caps/nvidia-cap1": "nvidia-caps"},
}  # fmt: skip


def character_majors(listing: str) -> dict[str, set[int]]:
    """Group name -> majors, from the "Character devices:" section of a /proc/devices listing."""
    majors: dict[str, set[int]] = {}
    section = listing.split("Character devices:", 1)[1].split("Block devices:", 1)[0]
    for line in section.strip().splitlines():
        major, name = line.split(None, 1)
        majors.setdefault(name.strip(), set()).add(int(major))
    return majors


def render_unit(gpu: bool) -> str:
    variables = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    environment = jinja2.Environment(undefined=jinja2.ChainableUndefined, trim_blocks=True, keep_trailing_newline=True)
    template = environment.from_string((ROLE / "templates/etc/systemd/system/vlmkit.service.j2").read_text())
    return template.render(
        inference_service_gpu=gpu,
        inference_service_gpu_device_groups=variables.get("inference_service_gpu_device_groups", []),
        inference_service_environment={},
        inference_service_extra_unit_lines=[],
        inference_service_memory_deny_write_execute=False,
    )


def allowed_majors(unit: str, listing: str) -> set[int]:
    """The character majors systemd allows for the unit's DeviceAllow=char-PATTERN lines."""
    majors = character_majors(listing)
    allowed: set[int] = set()
    for pattern in re.findall(r"^DeviceAllow=char-(\S+)\s+rw?m?$", unit, flags=re.MULTILINE):
        for name, numbers in majors.items():
            if fnmatchcase(name, pattern):
                allowed |= numbers
    return allowed


@pytest.mark.parametrize("driver", sorted(NODES_BY_DRIVER))
def test_gpu_unit_allows_every_node_cuda_opens(driver):
    unit = render_unit(gpu=True)
    assert re.search(r"^DevicePolicy=closed$", unit, flags=re.MULTILINE), "the GPU unit must keep DevicePolicy=closed"
    listing = (FIXTURES / f"proc-devices-{driver}.txt").read_text()
    majors = character_majors(listing)
    allowed = allowed_majors(unit, listing)
    denied = {node: name for node, name in NODES_BY_DRIVER[driver].items() if not majors[name] <= allowed}
    assert not denied, f"driver {driver}: the unit's DeviceAllow= rules deny {denied}; allowed majors {sorted(allowed)}"


@pytest.mark.parametrize("driver", sorted(NODES_BY_DRIVER))
def test_gpu_unit_allows_no_device_beyond_nvidias(driver):
    listing = (FIXTURES / f"proc-devices-{driver}.txt").read_text()
    allowed = allowed_majors(render_unit(gpu=True), listing)
    nvidia = {
        major for name, numbers in character_majors(listing).items() if name.startswith("nvidia") for major in numbers
    }
    assert allowed <= nvidia, f"the unit allows non-NVIDIA majors {sorted(allowed - nvidia)}"


def test_cpu_unit_has_private_devices_and_no_gpu_rules():
    unit = render_unit(gpu=False)
    assert "PrivateDevices=yes" in unit
    assert "DeviceAllow=" not in unit
