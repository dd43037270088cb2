"""gpu_preflight on the disposable test hosts: Debian 12 containers with no GPU.

"A GPU with a driver" is the STAND-IN nvidia-smi (tests/gpu_stack/standins) with a GPU list;
"a GPU without a driver" is a STAND-IN sysfs folder listing an NVIDIA 3D controller. The planner
reads the 90B 4-bit model's config from tests/planner/fixtures on the controller.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gpu_stack.stage import H100, flat, tail

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
    assert (
        "NVIDIA driver: kept 580.159.04 (branch 580 >= 580, the floor for torch 2.13.0 in gpu.txt is a CUDA 13 build "
        "(nvidia-cuda-runtime==13.0.96); it comes from the machine this container runs on)"
    ) in flat(run)
    assert "1 GPU(s): NVIDIA H100 80GB HBM3." in flat(run)
    assert (
        "Model fit: fits (tests/planner/fixtures/unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit: 54.8 GiB needed"
        in flat(run)
    )
    assert "CUDA 12.4: absent, not installed (cuda_toolkit_required is false)" in flat(run)
    # Check mode reports the same and changes nothing.
    assert check.returncode == 0 and check.changed == 0, tail(check.output)


def test_a_model_too_big_for_the_gpus_and_a_disk_too_small_are_reported_together(shared_stage):
    shared_stage.install_standin_nvidia_smi(
        {"driver_version": "580.159.04", "gpus": [{"name": "NVIDIA L4", "memory_mib": 23034}]}
    )
    run = shared_stage.run({"gpu_preflight_model_bytes": 0, "gpu_preflight_disk_margin_gib": 1000000}, log="too-big")
    text = flat(run)
    assert run.returncode != 0
    assert run.changed == 0
    assert "found 2 problem(s)" in text, tail(run.output)
    assert (
        "tests/planner/fixtures/unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit does not fit the GPUs of vlmkit-gpu-41: "
        "it needs 54.8 GiB, they have 22.49 GiB"
    ) in text
    assert "What would fit: " in text
    assert "Not enough disk for the model on vlmkit-gpu-41" in text and "(the checkpoint, 45.6 GiB" in text


def test_a_driver_below_the_locks_floor_in_a_container_is_refused_with_the_two_ways_out(shared_stage):
    shared_stage.install_standin_nvidia_smi({"driver_version": "550.54.15", "gpus": H100["gpus"]})
    run = shared_stage.run(log="old-driver")
    assert run.returncode != 0
    assert run.changed == 0
    text = flat(run)
    assert (
        "The NVIDIA driver 550.54.15 on vlmkit-gpu-41 is older than branch 580, the oldest that runs torch 2.13.0 in gpu.txt "
        "is a CUDA 13 build (nvidia-cuda-runtime==13.0.96), and this host is a container"
    ) in text, tail(run.output)
    assert "ask the provider for driver 580 or newer" in text and "requirements/gpu-cu12.txt" in text


def test_a_working_driver_below_the_floor_mig_a_hidden_model_folder_and_a_shared_full_disk_stop_before_any_install(
    shared_stage,
):
    """A VM (stand-in: the container plays one) with driver 550 while the lock's torch is a CUDA 13 build."""
    shared_stage.install_standin_nvidia_smi(
        {"driver_version": "550.54.15", "gpus": [{**H100["gpus"][0], "mig": "Enabled"}]}
    )
    shared_stage.ssh("mkdir -p /home/data && ln -sfn /home/data /srv/models")
    try:
        run = shared_stage.run(
            {
                "gpu_preflight_virtualization": "vm",
                "gpu_preflight_model_dir": "/srv/models/llama",
                "gpu_preflight_env_gib": 100000,
            },
            log="below-floor",
        )
    finally:
        shared_stage.ssh("rm -f /srv/models; rm -rf /home/data")
    text = flat(run)
    assert run.returncode != 0
    assert run.changed == 0, run.changed_tasks()
    assert "found 4 problem(s)" in text, tail(run.output)
    assert (
        "The NVIDIA driver 550.54.15 (branch 550) on vlmkit-gpu-41 is older than branch 580, the oldest that runs torch 2.13.0 "
        "in gpu.txt is a CUDA 13 build (nvidia-cuda-runtime==13.0.96). Nothing was installed. Two ways out: allow the driver "
        "upgrade (nvidia_driver_upgrade_allowed: true: nvidia_driver installs branch 580 over it"
    ) in text
    assert (
        "install torch's CUDA 12 build instead (python_env_lock_file:" in text and "requirements/gpu-cu12.txt" in text
    )
    assert "MIG is enabled on vlmkit-gpu-41 (GPU 0)" in text
    assert (
        "The model folder /srv/models/llama (really /home/data/llama) on vlmkit-gpu-41 is under /home, which the service's unit "
        "hides (ProtectHome=yes)"
    ) in text
    assert (
        "Not enough disk for the model on vlmkit-gpu-41" in text
        and "plus the environment (/opt/vlmkit/venv, 100000.0 GiB) on the same filesystem" in text
    )
    assert "nvidia_driver : " not in text


def test_a_driver_library_mismatch_asks_for_a_reboot_and_installs_nothing(shared_stage):
    shared_stage.install_standin_nvidia_smi({"driver_version": "580.95.05", "mismatch": True, "gpus": H100["gpus"]})
    run = shared_stage.run(
        {"gpu_preflight_virtualization": "vm", "gpu_preflight_pci_devices": shared_stage.add_standin_pci_gpu()},
        log="mismatch",
    )
    shared_stage.ssh("rm -rf /srv/standin-pci")
    text = flat(run)
    assert run.returncode != 0 and run.changed == 0, tail(run.output)
    assert "driver needs a reboot, not an install" in text
    assert "says: Failed to initialize NVML: Driver/library version mismatch" in text
    assert "Reboot the host (or reload the module" in text and "a reinstall would not cure it" in text


def test_an_install_never_puts_a_lower_branch_over_a_higher_one(shared_stage):
    """No working driver, but packages of branch 590 (a STAND-IN package) are installed: installing 580 is refused."""
    _no_driver(shared_stage)
    shared_stage.ssh(
        "mkdir -p /tmp/standin-590/DEBIAN && printf 'Package: libnvidia-compute-590\nVersion: 590.44.01-1\n"
        "Architecture: all\nMaintainer: vlmkit tests <standin@vlmkit.invalid>\nDescription: STAND-IN (vlmkit tests)\n' "
        "> /tmp/standin-590/DEBIAN/control && dpkg-deb --build /tmp/standin-590 /tmp/standin-590.deb >/dev/null "
        "&& dpkg -i /tmp/standin-590.deb >/dev/null"
    )
    try:
        run = shared_stage.run(
            {"gpu_preflight_virtualization": "vm", "gpu_preflight_pci_devices": shared_stage.add_standin_pci_gpu()},
            log="lower-branch",
        )
    finally:
        shared_stage.ssh("dpkg -r libnvidia-compute-590 >/dev/null; rm -rf /srv/standin-pci /tmp/standin-590*")
    text = flat(run)
    assert run.returncode != 0 and run.changed == 0, tail(run.output)
    assert (
        "Packages of NVIDIA driver branch 590 are installed on vlmkit-gpu-41 (libnvidia-compute-590), and nvidia_driver would "
        "install branch 580: it never installs a lower branch over a higher one"
    ) in text


def test_a_550_driver_is_kept_with_the_cuda_12_lock(shared_stage):
    """The second way out: torch's CUDA 12 build (requirements/gpu-cu12.txt) runs on the 550 driver, so it is kept."""
    shared_stage.install_standin_nvidia_smi({"driver_version": "550.54.15", "gpus": H100["gpus"]})
    lock = str(Path(__file__).resolve().parents[2] / "requirements" / "gpu-cu12.txt")
    run = shared_stage.run(
        {"python_env_lock_file": lock, "cuda_toolkit_required": False, "cudnn_required": False}, log="cu12-lock"
    )
    assert run.returncode == 0, tail(run.output)
    assert run.changed == 0, run.changed_tasks()
    assert (
        "NVIDIA driver: kept 550.54.15 (branch 550 >= 525, the floor for torch 2.10.0 in gpu-cu12.txt is a CUDA 12 build "
        "(nvidia-cuda-runtime-cu12==12.8.90); it comes from the machine this container runs on)"
    ) in flat(run)


def test_a_host_without_systemd_is_refused_before_anything_changes(shared_stage):
    """STAND-IN: gpu_preflight_systemd_dir points where systemd's runtime folder is not, as on a host whose PID 1 is no systemd."""
    shared_stage.install_standin_nvidia_smi(H100)
    run = shared_stage.run({"gpu_preflight_systemd_dir": "/run/no-systemd-standin"}, log="no-systemd")
    text = flat(run)
    assert run.returncode != 0 and run.changed == 0, tail(run.output)
    assert (
        "vlmkit-gpu-41 does not run systemd (no /run/no-systemd-standin; PID 1 is systemd): the deploy ends with vlmkit's systemd unit"
        in text
    )
    assert "gpu_preflight_service_deployed: false" in text
