"""What a GPU-stage test drives: gpu.yml against one test host from a generated inventory pointing at the
STAND-IN NVIDIA mirror, and helpers to read its output.

The hosts are the disposable Debian 12 containers of the test lab (no GPU, no kernel modules). Where a
test needs "a GPU with a driver" it installs the STAND-IN nvidia-smi (tests/gpu_stack/standins) and
says so; NVIDIA's repository, runfile and archives are STAND-INS too (tests/gpu_stack/standin.py).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.gpu_stack.standin import StandinServer
from tests.lab.deploy import PlaybookRun, ansible_playbook
from tests.lab.hosts import BRIDGE_ADDRESS, SSH_KEY, TestHost
from tests.lab.paths import CACHE_DIR

LOGS = CACHE_DIR / "run" / "gpu-stack"
PLANNER_90B = "tests/planner/fixtures/unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit"
H100 = {
    "driver_version": "580.159.04",
    "cuda_version": "13.0",
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}],
}


def flat(run: PlaybookRun) -> str:
    """The output with every run of whitespace made one space (the YAML callback wraps long lines)."""
    return " ".join(run.output.split())


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class GpuStage:
    """Runs playbooks/gpu.yml against one host from a generated inventory (the stand-in mirror's URLs)."""

    host: TestHost
    inventory: Path
    standin: StandinServer

    def run(
        self, extra_vars: dict | None = None, *args: str, log: str = "run", playbook: str = "playbooks/gpu.yml"
    ) -> PlaybookRun:
        return ansible_playbook(
            playbook,
            self.inventory,
            ("--limit", self.host.name, "-e", json.dumps(extra_vars or {}), *args),
            log=LOGS / f"{self.host.name}-{log}.log",
            timeout=900,
        )

    def ssh(self, command: str, check: bool = True) -> str:
        return self.host.ssh(command, check=check).stdout

    def install_standin_nvidia_smi(self, config: dict) -> None:
        """Make the host look like one with a GPU and a driver: the STAND-IN nvidia-smi and its GPU list."""
        subprocess.run(["scp", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-i", str(SSH_KEY),
                        str(Path(__file__).parent / "standins" / "nvidia-smi"), f"root@{self.host.ip}:/usr/bin/nvidia-smi"],
                       check=True, capture_output=True)  # fmt: skip
        self.ssh(f"chmod 755 /usr/bin/nvidia-smi && echo '{json.dumps(config)}' > /etc/nvidia-smi-standin.json")

    def add_standin_pci_nvswitch(self) -> None:
        """A STAND-IN NVSwitch in the stand-in sysfs folder (PCI vendor 0x10de, class 0x0680), and the stand-in
        driver's marker that makes its cuInit answer 802 until the stand-in Fabric Manager runs."""
        self.ssh(
            "mkdir -p /srv/standin-pci/0000:05:00.0 && cd /srv/standin-pci/0000:05:00.0 && "
            "echo 0x10de > vendor && echo 0x22a3 > device && echo 0x068000 > class && "
            "mkdir -p /etc/nvidia-standin && touch /etc/nvidia-standin/fabric-required"
        )

    def add_standin_pci_gpu(self, count: int = 1) -> str:
        """A STAND-IN sysfs folder listing `count` NVIDIA 3D controllers (an H100's IDs); returns its path."""
        for index in range(count):
            self.ssh(
                f"mkdir -p /srv/standin-pci/0000:{0x18 + index:02x}:00.0 && cd /srv/standin-pci/0000:{0x18 + index:02x}:00.0 && "
                "echo 0x10de > vendor && echo 0x2330 > device && echo 0x030200 > class"
            )
        return "/srv/standin-pci"


def write_inventory(path: Path, hosts: dict[str, str], standin: StandinServer) -> Path:
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(SSH_KEY),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_python_interpreter": "/usr/bin/python3",
                # The planner reads the 90B's config from the checkout; the disk check sees a 1 MiB model
                # unless a test asks otherwise (the CI machine's disk is not the test's subject).
                "gpu_preflight_plan_model": PLANNER_90B,
                "gpu_preflight_model_bytes": 1048576,
                "gpu_preflight_env_gib": 0,
                "gpu_preflight_toolkit_gib": 0,
                # The stand-in mirror, laid out like developer.download.nvidia.com.
                "cuda_toolkit_repo_base_url": f"{standin.url}/compute/cuda/repos",
                "cuda_toolkit_download_base_url": f"{standin.url}/compute/cuda",
                "cudnn_download_base_url": f"{standin.url}/compute/cudnn/redist/cudnn",
            }
        },
        "vlmkit": {
            "children": {
                "gpu": {
                    "hosts": {name: {"ansible_host": ip} for name, ip in hosts.items()},
                    "vars": {"vlmkit_profile": "gpu"},
                }
            }
        },
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@contextlib.contextmanager
def booted_stage(host_environment, standin, name: str, index: int, directory: Path):
    host = host_environment.boot(name, index)
    try:
        # apt goes to the stand-in mirror directly, not through the Debian apt cache.
        host.ssh(f"echo 'Acquire::http::Proxy::{BRIDGE_ADDRESS} \"DIRECT\";' > /etc/apt/apt.conf.d/02standin-direct")
        yield GpuStage(host, write_inventory(directory / "hosts.yml", {name: host.ip}, standin), standin)
    finally:
        host.destroy()
        host_environment.hosts.pop(name, None)


class RebootWatcher:
    """Boots the container again when it reboots (systemd-nspawn exits with 133 on a reboot)."""

    def __init__(self, host: TestHost) -> None:
        self.host, self.reboots, self.errors = host, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RebootWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            process = self.host.process
            if process is not None and process.poll() == 133:
                try:
                    self.host.start()
                    self.reboots += 1
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)
                    return
            time.sleep(0.2)
