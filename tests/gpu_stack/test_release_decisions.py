"""What the GPU roles decide from the host's release and kernel, run by Ansible on the controller with
the facts of the release given (no host: the decisions are the roles' own templates and tasks).

Ubuntu 24.04: NVIDIA's ubuntu2404 repository is the host's (the driver's, with nvidia_driver_source:
nvidia), and CUDA 12.4, which that repository lacks, comes from the runfile (tested on a host in
test_cuda_cudnn.py); apt from ubuntu2404 is refused with the two ways out.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.deploy import play_on_this_machine

REPO = Path(__file__).resolve().parents[2]

UBUNTU_2404 = {
    "distribution": "Ubuntu",
    "distribution_major_version": "24",
    "architecture": "x86_64",
    "kernel": "6.8.0-45-generic",
}
UBUNTU_2204 = {
    "distribution": "Ubuntu",
    "distribution_major_version": "22",
    "architecture": "x86_64",
    "kernel": "5.15.0-126-generic",
}
DEBIAN_12 = {
    "distribution": "Debian",
    "distribution_major_version": "12",
    "architecture": "x86_64",
    "kernel": "6.1.0-18-cloud-amd64",
}


def play(tmp_path: Path, facts: dict, tasks: list[dict], extra: dict | None = None) -> subprocess.CompletedProcess:
    plays = [
        {"hosts": "localhost", "gather_facts": False, "vars": {"ansible_facts": facts, **(extra or {})}, "tasks": tasks}
    ]
    return play_on_this_machine(tmp_path, plays)


def decisions(tmp_path: Path, facts: dict) -> dict:
    names = [
        "cuda_toolkit_install_method",
        "cuda_toolkit_repo_distro",
        "nvidia_driver_nvidia_packages",
        "nvidia_driver_ubuntu_packages",
        "nvidia_driver_kernel_packages",
    ]
    tasks = [
        {"ansible.builtin.include_vars": str(REPO / "roles" / role / part / "main.yml")}
        for role in ("cuda_toolkit", "nvidia_driver")
        for part in ("defaults", "vars")
    ]
    tasks.append({"ansible.builtin.debug": {"msg": {name: "{{ " + name + " }}" for name in names}}})
    result = play(tmp_path, facts, tasks)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    task = json.loads(result.stdout)["plays"][0]["tasks"][-1]
    return task["hosts"]["localhost"]["msg"]


@pytest.mark.parametrize(
    ("facts", "method", "distro", "headers"),
    [
        (UBUNTU_2404, "runfile", "ubuntu2404", "linux-headers-generic"),
        (UBUNTU_2204, "apt", "ubuntu2204", "linux-headers-generic"),
        (DEBIAN_12, "apt", "debian12", "linux-headers-cloud-amd64"),
    ],
)
def test_each_release_takes_its_own_nvidia_repository_cuda_124_where_it_exists_and_the_kernels_headers_metapackage(
    tmp_path, facts, method, distro, headers
):
    decided = decisions(tmp_path, facts)
    assert decided["cuda_toolkit_install_method"] == method
    assert decided["cuda_toolkit_repo_distro"] == distro
    assert decided["nvidia_driver_nvidia_packages"] == ["nvidia-open-580"]
    assert decided["nvidia_driver_ubuntu_packages"] == ["nvidia-headless-580-server-open", "nvidia-utils-580-server"]
    assert decided["nvidia_driver_kernel_packages"] == [f"linux-headers-{facts['kernel']}", headers, "dkms"]


def test_cuda_124_by_apt_from_the_ubuntu2404_repository_is_refused_with_the_two_ways(tmp_path):
    result = play(
        tmp_path,
        UBUNTU_2404,
        [{"ansible.builtin.include_role": {"name": "cuda_toolkit", "tasks_from": "apt.yml"}}],
        {
            "cuda_toolkit_install_method": "apt",
            "cuda_toolkit_found_release": "",
            "cuda_toolkit_found_by_package": False,
        },
    )
    assert result.returncode != 0
    text = " ".join(result.stdout.split())
    assert "NVIDIA's ubuntu2404 repository has no CUDA 12.4 packages (it starts at 12.5)" in text, result.stdout[-3000:]
    assert (
        "cuda_toolkit_install_method: runfile (the default on Ubuntu 24.04)" in text
        and "cuda_toolkit_repo_distro: ubuntu2204" in text
    )
