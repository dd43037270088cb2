"""gpu_preflight on the disposable test hosts: Debian 12 containers with no GPU.

"A GPU with a driver" is the STAND-IN nvidia-smi (tests/gpu_stack/standins) with a GPU list;
"a GPU without a driver" is a STAND-IN sysfs folder listing an NVIDIA 3D controller. The planner
reads the 90B 4-bit model's config from tests/planner/fixtures on the controller.
"""

from __future__ import annotations

import pytest

from tests.gpu_stack.conftest import H100, flat, tail

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]


def _no_driver(stage) -> None:
    stage.ssh("rm -f /usr/bin/nvidia-smi /etc/nvidia-smi-standin.json")


def test_gpu_profile_on_a_gpu_less_host_stops_before_changing_anything_and_names_the_options(shared_stage):
    _no_driver(shared_stage)
    run = shared_stage.run(log="gpu-less")
    assert run.returncode != 0
    assert run.changed == 0, run.changed_tasks()
    assert "No NVIDIA GPU on vlmkit-gpu-41: nvidia-smi: nvidia-smi not found" in flat(run), tail(run.output)
    assert "no NVIDIA display or 3D controller" in flat(run)
    assert "put this host in the cpu group (vlmkit_profile: cpu)" in flat(run)
    # The container is recognised too, with the evidence.
    assert "vlmkit-gpu-41 is a container (" in flat(run) and "container=systemd-nspawn" in flat(run)
    assert "and changed nothing" in flat(run)
    assert "nvidia_driver : " not in flat(run), "a GPU role ran after the preflight failed"


def test_cpu_profile_skips_the_gpu_roles_on_purpose_and_says_so(shared_stage):
    _no_driver(shared_stage)
    run = shared_stage.run({"vlmkit_profile": "cpu"}, log="cpu-profile")
    assert run.returncode == 0, tail(run.output)
    assert run.changed == 0, run.changed_tasks()
    assert "GPU roles: skipped on purpose: profile cpu does not use a GPU" in flat(run)
    assert "Skipped on purpose: profile cpu uses no GPU; nvidia_driver, cuda_toolkit and cudnn did not run" in flat(run)
    for role in ("nvidia_driver : ", "cuda_toolkit : ", "cudnn : "):
        assert role not in flat(run)


def test_container_with_a_gpu_but_no_usable_driver_is_refused_with_the_reason(shared_stage):
    _no_driver(shared_stage)
    pci = shared_stage.add_standin_pci_gpu()
    try:
        run = shared_stage.run({"gpu_preflight_pci_devices": pci}, log="container-no-driver")
    finally:
        shared_stage.ssh("rm -rf /srv/standin-pci")
    assert run.returncode != 0
    assert run.changed == 0
    assert "found 1 problem(s)" in flat(run), tail(run.output)
    assert "vlmkit-gpu-41 is a container (" in flat(run)
    assert "No driver can be installed inside a container" in flat(run)
    assert "NVIDIA Container Toolkit" in flat(run) and "deploy to a VM or bare-metal server" in flat(run)
    assert "No NVIDIA GPU on" not in flat(run)


def test_container_keeps_the_driver_its_machine_provides_and_the_90b_fits_one_h100(shared_stage):
    shared_stage.install_standin_nvidia_smi(H100)
    # The container's sysfs lists 4 GPUs of its machine; the driver gives it one: one is what counts.
    pci = shared_stage.add_standin_pci_gpu(count=4)
    extra = {"cuda_toolkit_required": False, "cudnn_required": False, "gpu_preflight_pci_devices": pci}
    try:
        run = shared_stage.run(extra, log="container-h100")
        check = shared_stage.run(extra, "--check", log="container-h100-check")
    finally:
        shared_stage.ssh("rm -rf /srv/standin-pci")
    assert run.returncode == 0, tail(run.output)
    assert run.changed == 0, run.changed_tasks()
    assert "NVIDIA driver: kept 580.159.04 (branch 580 >= 550 for CUDA 12.4; it comes from the machine this container runs on)" in flat(run)
    assert "1 GPU(s): NVIDIA H100 80GB HBM3." in flat(run)
    assert "Model fit: fits (tests/planner/fixtures/unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit: 54.8 GiB needed" in flat(run)
    assert "CUDA 12.4: absent, not installed (cuda_toolkit_required is false)" in flat(run)
    # Check mode reports the same and changes nothing.
    assert check.returncode == 0 and check.changed == 0, tail(check.output)


def test_a_model_too_big_for_the_gpus_and_a_disk_too_small_are_reported_together(shared_stage):
    shared_stage.install_standin_nvidia_smi({"driver_version": "580.159.04", "gpus": [{"name": "NVIDIA L4", "memory_mib": 23034}]})
    run = shared_stage.run({"gpu_preflight_model_bytes": 0, "gpu_preflight_disk_margin_gib": 1000000}, log="too-big")
    text = flat(run)
    assert run.returncode != 0
    assert run.changed == 0
    assert "found 2 problem(s)" in text, tail(run.output)
    assert ("tests/planner/fixtures/unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit does not fit the GPUs of vlmkit-gpu-41: "
            "it needs 54.8 GiB, they have 22.49 GiB") in text
    assert "What would fit: " in text
    assert "Not enough disk for the model on vlmkit-gpu-41" in text and "(the checkpoint, 45.6 GiB" in text


def test_a_driver_older_than_550_in_a_container_is_refused(shared_stage):
    shared_stage.install_standin_nvidia_smi({"driver_version": "535.183.01", "gpus": H100["gpus"]})
    run = shared_stage.run(log="old-driver")
    assert run.returncode != 0
    assert run.changed == 0
    assert ("The NVIDIA driver 535.183.01 on vlmkit-gpu-41 is older than branch 550, the minimum for CUDA 12.4, "
            "and this host is a container") in flat(run), tail(run.output)
