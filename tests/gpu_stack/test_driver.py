"""nvidia_driver's install path on a container standing in for a VM with a GPU and no driver.

STAND-INS, named as such: gpu_preflight_virtualization: vm (the container plays a VM), a sysfs folder
listing an NVIDIA 3D controller, and the stand-in mirror's cuda-drivers-550 whose nvidia-smi fails
until the next boot (as a freshly installed driver does) and whose persistence unit runs nvidia-smi
-pm 1. DKMS and kernel headers are not exercised: the stand-in headers package takes their place.
"""

from __future__ import annotations

import os

import pytest

from tests.gpu_stack.conftest import RebootWatcher, flat, tail

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]


@pytest.mark.gpu_host("vlmkit-gpu-44", 44)
def test_driver_is_installed_held_and_loaded_by_a_reboot_only_when_allowed(gpu_stage):
    stage = gpu_stage
    settings = {
        "gpu_preflight_virtualization": "vm",
        "gpu_preflight_pci_devices": stage.add_standin_pci_gpu(),
        "nvidia_driver_source": "nvidia",
        "nvidia_driver_kernel_packages": [f"linux-headers-{os.uname().release}"],
        "cuda_toolkit_required": False,
        "cudnn_required": False,
    }

    # Not allowed to reboot: it installs, holds, blacklists nouveau, then stops and says why.
    first = stage.run(settings, log="driver-no-reboot")
    assert first.returncode != 0
    text = flat(first)
    assert "driver to be installed by nvidia_driver" in text, tail(first.output)
    assert "model fit: checked once the driver reports the GPUs" in text
    assert "The NVIDIA 550 driver is installed on vlmkit-gpu-44 but not loaded" in text
    assert "couldn't communicate with the NVIDIA driver" in text and "set nvidia_driver_reboot_allowed: true" in text
    assert set(stage.ssh("apt-mark showhold").split()) >= {"cuda-drivers-550", "libnvidia-compute-550", "cuda-keyring"}
    assert "blacklist nouveau" in stage.ssh("cat /etc/modprobe.d/vlmkit-blacklist-nouveau.conf")

    # Allowed: it reboots, waits for the host, turns persistence on, checks nvidia-smi, then the fit.
    with RebootWatcher(stage.host) as watcher:
        second = stage.run({**settings, "nvidia_driver_reboot_allowed": True}, log="driver-reboot")
    assert not watcher.errors, watcher.errors
    assert second.returncode == 0, tail(second.output)
    assert watcher.reboots == 1
    text = flat(second)
    assert "NVIDIA driver: installed branch 550 (550.54.15, from nvidia, held), rebooted to load it; 1 GPU(s): NVIDIA H100 80GB HBM3." in text
    assert "Model fit: fits" in text
    assert stage.ssh("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader").strip() == "Enabled"

    # A working driver is kept: nothing changes, nothing reboots.
    with RebootWatcher(stage.host) as watcher:
        third = stage.run({**settings, "nvidia_driver_reboot_allowed": True}, log="driver-kept")
    assert third.returncode == 0, tail(third.output)
    assert third.changed == 0, "third run changed:\n" + "\n".join(third.changed_tasks())
    assert watcher.reboots == 0
    assert "NVIDIA driver: kept 550.54.15 (branch 550 >= 550 for CUDA 12.4; not reinstalled)" in flat(third)
