"""nvidia_driver's install path on a container standing in for a VM with a GPU, an NVSwitch and no driver.

STAND-INS, named as such: gpu_preflight_virtualization: vm (the container plays a VM), a sysfs folder
listing an NVIDIA 3D controller and an NVSwitch, and the stand-in mirror's nvidia-open-580 (its
nvidia-smi fails and its libcuda's cuInit answers 100 until the next boot, as a freshly installed
driver's do; cuInit answers 802 while the NVSwitch fabric is down; its persistence unit says
--no-persistence-mode, as Canonical's does) and nvidia-fabricmanager-580 (the driver's version, and a
newer decoy that refuses this driver). DKMS and kernel headers are not exercised: the stand-in
headers package takes their place. The device-node script runs against a stand-in /proc/devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gpu_stack.stage import RebootWatcher, flat, tail

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(1200)]


@pytest.mark.gpu_host("vlmkit-gpu-44", 44)
def test_driver_580_is_installed_held_and_after_reboots_keeps_fabric_persistence_and_device_nodes(gpu_stage):
    stage = gpu_stage
    pci = stage.add_standin_pci_gpu()
    stage.add_standin_pci_nvswitch()
    settings = {
        "gpu_preflight_virtualization": "vm",
        "gpu_preflight_pci_devices": pci,
        "nvidia_driver_source": "nvidia",
        "nvidia_driver_kernel_packages": [f"linux-headers-{os.uname().release}"],
        "cuda_toolkit_required": False,
        "cudnn_required": False,
    }

    # Not allowed to reboot: it installs the default branch (580, open modules), holds what dpkg installed,
    # blacklists nouveau, then stops and says why.
    first = stage.run(settings, log="driver-no-reboot")
    assert first.returncode != 0
    text = flat(first)
    assert "driver branch 580 to be installed by nvidia_driver" in text, tail(first.output)
    assert "1 NVSwitch(es): Fabric Manager needed" in text
    assert "The NVIDIA 580 driver is installed on vlmkit-gpu-44 but not loaded" in text
    assert "couldn't communicate with the NVIDIA driver" in text and "set nvidia_driver_reboot_allowed: true" in text
    assert set(stage.ssh("apt-mark showhold").split()) >= {"nvidia-open-580", "libnvidia-compute-580", "cuda-keyring"}
    assert "blacklist nouveau" in stage.ssh("cat /etc/modprobe.d/vlmkit-blacklist-nouveau.conf")

    # Allowed: it reboots, then installs Fabric Manager of exactly the driver's version (not the newer decoy),
    # sees the fabric trained and cuInit 0, makes persistence mode survive reboots, and the device nodes.
    with RebootWatcher(stage.host) as watcher:
        second = stage.run({**settings, "nvidia_driver_reboot_allowed": True}, log="driver-reboot")
    assert not watcher.errors, watcher.errors
    assert second.returncode == 0, tail(second.output)
    assert watcher.reboots == 1
    text = flat(second)
    assert (
        "NVIDIA driver: installed branch 580 (580.95.05, from nvidia, held), rebooted to load it; 1 GPU(s): NVIDIA H100 80GB HBM3. "
        "CUDA initialises (cuInit 0). Fabric Manager 580.95.05 runs; fabric trained. Persistence mode on"
    ) in text
    assert "Model fit: fits" in text
    assert stage.ssh("dpkg-query -W -f '${Version}' nvidia-fabricmanager-580").strip() == "580.95.05-1"
    assert "nvidia-fabricmanager-580" in stage.ssh("apt-mark showhold").split()
    assert (
        stage.ssh("systemctl is-enabled vlmkit-nvidia-devices.service nvidia-persistenced nvidia-fabricmanager").split()
        == ["enabled"] * 3
    )
    assert "nvidia_uvm" in stage.ssh("cat /etc/modules-load.d/vlmkit-nvidia.conf")

    # A reboot the play did not ask for: persistence mode and the fabric come back by themselves (the daemon's
    # drop-in, the enabled units), and vlmkit's own unit would be ordered after them.
    stage.host.reboot()
    persistence = stage.ssh("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader").strip()
    assert persistence == "Enabled", persistence
    assert stage.ssh("test -e /run/nvidia-standin/fabric-running && echo up").strip() == "up"

    # The device-node script makes the nodes from the majors the driver registered (stand-in /proc/devices:
    # the names of driver 545 and later, as measured on a real H200).
    stage.ssh(
        "mkdir -p /tmp/nodes/dev /tmp/nodes/gpus/0000:18:00.0 && printf 'Character devices:\\n195 nvidia\\n195 nvidiactl\\n"
        "238 nvidia-uvm\\n239 nvidia-nvswitch\\n241 nvidia-caps\\n' > /tmp/nodes/devices && "
        "printf 'Model: NVIDIA H100\\nDevice Minor: 0\\n' > /tmp/nodes/gpus/0000:18:00.0/information"
    )
    stage.ssh("/usr/local/sbin/vlmkit-nvidia-device-nodes /tmp/nodes/devices /tmp/nodes/dev /tmp/nodes/gpus")
    nodes = stage.ssh("cd /tmp/nodes/dev && stat -c '%n %F %t:%T %a' * | sort").strip().splitlines()
    assert nodes == [
        "nvidia-uvm character special file ee:0 666",
        "nvidia-uvm-tools character special file ee:1 666",
        "nvidia0 character special file c3:0 666",
        "nvidiactl character special file c3:ff 666",
    ], nodes

    # A working driver is kept: nothing changes, nothing reboots.
    with RebootWatcher(stage.host) as watcher:
        third = stage.run({**settings, "nvidia_driver_reboot_allowed": True}, log="driver-kept")
    assert third.returncode == 0, tail(third.output)
    assert third.changed == 0, "third run changed:\n" + "\n".join(third.changed_tasks())
    assert watcher.reboots == 0
    assert (
        "NVIDIA driver: kept 580.95.05 (branch 580 >= 580, the floor for torch 2.13.0 in gpu.txt is a CUDA 13 build"
        in flat(third)
    )


@pytest.mark.gpu_host("vlmkit-gpu-46", 46)
def test_the_branch_dpkg_really_installed_is_recorded_held_and_checked_when_the_asked_one_is_transitional(gpu_stage):
    """Branch 535 asked for (allowed by the CUDA-12 lock's floor, 525); the STAND-IN nvidia-open-535 is a transitional
    package of nvidia-open-580, as Ubuntu makes of old branches: what runs, and what is held, is 580."""
    stage = gpu_stage
    settings = {
        "gpu_preflight_virtualization": "vm",
        "gpu_preflight_pci_devices": stage.add_standin_pci_gpu(),
        "python_env_lock_file": str(Path(__file__).resolve().parents[2] / "requirements" / "gpu-cu12.txt"),
        "nvidia_driver_source": "nvidia",
        "nvidia_driver_branch": 535,
        "nvidia_driver_reboot_allowed": True,
        "nvidia_driver_kernel_packages": [f"linux-headers-{os.uname().release}"],
        "cuda_toolkit_required": False,
        "cudnn_required": False,
    }
    with RebootWatcher(stage.host) as watcher:
        run = stage.run(settings, log="driver-transitional")
    assert not watcher.errors, watcher.errors
    assert run.returncode == 0, tail(run.output)
    assert (
        "NVIDIA driver: installed branch 580 (580.95.05, from nvidia, held, asked for 535: dpkg installed libnvidia-compute-580), "
        "rebooted to load it"
    ) in flat(run)
    assert set(stage.ssh("apt-mark showhold").split()) >= {
        "nvidia-open-535",
        "nvidia-open-580",
        "libnvidia-compute-580",
    }
