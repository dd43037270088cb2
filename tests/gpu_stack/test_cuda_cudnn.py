"""cuda_toolkit and cudnn against the STAND-IN NVIDIA mirror (tests/gpu_stack/standin.py): NVIDIA's
package names, versions and layout, a signed flat repository, a runfile with the real installer's
toolkit interface, the cuDNN archive. The hosts are Debian 12 containers; the STAND-IN nvidia-smi
plays the driver their machine would provide.
"""

from __future__ import annotations

import pytest

from tests.gpu_stack.stage import flat, tail
from tests.gpu_stack.standin import BROKEN_RUNFILE, CUDNN_ARCHIVE, RUNFILE

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]

DRIVER_580 = {
    "driver_version": "580.95.05",
    "cuda_version": "13.0",
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}],
}
# apt's cuDNN lands in the default loader path: the role takes it only when asked.
APT = {"cuda_toolkit_install_method": "apt", "cudnn_install_method": "apt", "cudnn_in_loader_path": True}


@pytest.mark.gpu_host("vlmkit-gpu-42", 42)
def test_apt_installs_cuda_124_and_cudnn_910_pinned_and_held_from_a_mirror_idempotently(gpu_stage):
    stage = gpu_stage
    stage.install_standin_nvidia_smi(DRIVER_580)

    # Check mode on a fresh host says what it would do and changes nothing.
    # Asked for apt's cuDNN without saying it may sit in the default loader path: refused, nothing installed.
    refused = stage.run({**APT, "cudnn_in_loader_path": False, "cuda_toolkit_required": False}, log="apt-cudnn-refused")
    assert refused.returncode != 0
    assert (
        "cudnn_install_method: apt puts libcudnn in /usr/lib/x86_64-linux-gnu, the dynamic linker's default path"
        in flat(refused)
    )

    check = stage.run(APT, "--check", log="apt-check-fresh")
    assert check.returncode == 0, tail(check.output)
    assert "CUDA 12.4: would be installed (apt) in /usr/local/cuda-12.4 (check mode)" in flat(check)
    assert "cuDNN 9.1.0.70: would be installed (apt) (check mode)" in flat(check)
    assert (
        stage.ssh("ls /etc/apt/sources.list.d/; dpkg-query -W cuda-keyring cuda-toolkit-12-4 2>&1", check=False)
        .strip()
        .endswith("no packages found matching cuda-toolkit-12-4")
    ), "check mode installed something"

    first = stage.run(APT, log="apt-first")
    assert first.returncode == 0, tail(first.output)
    assert "CUDA 12.4: installed (apt) in /usr/local/cuda-12.4, nvcc V12.4.131" in flat(first)
    assert (
        "cuDNN 9.1.0.70: installed (apt), verified 9.1.0 (/usr/lib/x86_64-linux-gnu/libcudnn.so.9: 90100; "
        "in the default loader path)"
    ) in flat(first)

    # Pinned (the mirror's newer cuDNN 9.8 was not taken) and held.
    installed = stage.ssh(
        "dpkg-query -W -f '${Package}=${Version}\\n' cuda-keyring cuda-toolkit-12-4 libcudnn9-cuda-12 libcudnn9-dev-cuda-12"
    )
    assert installed.split() == [
        "cuda-keyring=1.1-1",
        "cuda-toolkit-12-4=12.4.1-1",
        "libcudnn9-cuda-12=9.1.0.70-1",
        "libcudnn9-dev-cuda-12=9.1.0.70-1",
    ]
    assert "Candidate: 9.8.0.87-1" in stage.ssh("apt-cache policy libcudnn9-cuda-12")
    assert set(stage.ssh("apt-mark showhold").split()) >= {
        "cuda-keyring",
        "cuda-toolkit-12-4",
        "libcudnn9-cuda-12",
        "libcudnn9-dev-cuda-12",
    }

    # One source, deb822, with the mirror's URL; the keyring package's own list is gone.
    sources = stage.ssh("ls /etc/apt/sources.list.d/").split()
    assert "vlmkit-cuda.sources" in sources and "cuda-debian12-x86_64.list" not in sources, sources
    assert f"URIs: {stage.standin.url}/compute/cuda/repos/debian12/x86_64/" in stage.ssh(
        "cat /etc/apt/sources.list.d/vlmkit-cuda.sources"
    )

    # A login shell finds nvcc through /etc/profile.d, after its own PATH; no CUDA_HOME that would contradict
    # the environment's torch (a CUDA 13 build in requirements/gpu.txt); no .bashrc edits.
    login = stage.ssh("bash -lc 'nvcc --version; echo PATH=$PATH; echo CUDA_HOME=$CUDA_HOME'")
    assert "release 12.4, V12.4.131" in login and "CUDA_HOME=\n" in login + "\n", login
    assert login.split("PATH=", 1)[1].split("\n", 1)[0].endswith(":/usr/local/cuda-12.4/bin"), login
    # As with NVIDIA's real packages, the linker names the libraries through /usr/local/cuda (000_cuda.conf comes
    # first); the role's check compares real paths, so it passed above.
    first_path = stage.ssh("ldconfig -p | awk '/libcudart.so.12 /{print $NF; exit}'").strip()
    assert first_path == "/usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.12", first_path
    assert (
        stage.ssh(f"readlink -f {first_path}").strip()
        == "/usr/local/cuda-12.4/targets/x86_64-linux/lib/libcudart.so.12.4.127"
    )
    assert "cuda" not in stage.ssh("cat /root/.bashrc /root/.profile 2>/dev/null", check=False)

    second = stage.run(APT, log="apt-second")
    assert second.returncode == 0, tail(second.output)
    assert second.changed == 0, "second run changed:\n" + "\n".join(second.changed_tasks())
    assert "CUDA 12.4: kept: already in /usr/local/cuda-12.4, nvcc V12.4.131" in flat(second)
    assert "cuDNN 9.1.0.70: kept: already installed (apt)" in flat(second)

    again = stage.run(APT, "--check", log="apt-check-converged")
    assert again.returncode == 0 and again.changed == 0, tail(again.output)


@pytest.mark.gpu_host("vlmkit-gpu-43", 43)
def test_runfile_through_a_proxy_and_the_cudnn_archive_offline_and_a_wrong_runfile_is_caught(gpu_stage, proxy):
    stage = gpu_stage
    stage.install_standin_nvidia_smi(DRIVER_580)
    settings = {
        "cuda_toolkit_install_method": "runfile",
        "cudnn_install_method": "tarball",
        "cudnn_offline": True,
        "cudnn_offline_dir": str(stage.standin.offline),
        "vlmkit_proxy_env": {"http_proxy": proxy.url},
    }

    # A runfile that installs another release under the 12.4 name does not pass the role's check.
    broken = stage.run({**settings, "cuda_toolkit_runfile_name": BROKEN_RUNFILE}, log="runfile-broken")
    assert broken.returncode != 0
    assert "CUDA 12.4 in /usr/local/cuda-12.4 is not what was promised" in flat(broken), tail(broken.output)
    assert "release 12.3, V12.3.107" in flat(broken) and "cudaRuntimeGetVersion: 12030 (expected 12040)" in flat(broken)

    # The right runfile replaces it; the download went through the proxy; the archive came from the controller.
    first = stage.run(settings, log="runfile-first")
    assert first.returncode == 0, tail(first.output)
    assert "CUDA 12.4: installed (runfile) in /usr/local/cuda-12.4, nvcc V12.4.99" in flat(first)
    assert (
        "cuDNN 9.1.0.70: installed (tarball), verified 9.1.0 (/usr/local/cudnn-9.1.0.70/lib/libcudnn.so.9: 90100; "
        "not in the default loader path)"
    ) in flat(first)
    assert f"{stage.standin.url}/compute/cuda/12.4.0/local_installers/{RUNFILE}" in proxy.requests
    assert not [path for path in stage.standin.requests if CUDNN_ARCHIVE in path], "the offline archive was downloaded"
    assert stage.ssh("ls /var/tmp/vlmkit-gpu/").split() == [], "installers were left behind"
    # The system cuDNN stays out of the default loader path, where torch's own cuDNN wheel could load it.
    assert "libcudnn" not in stage.ssh("ldconfig -p")
    assert stage.ssh("ls /etc/ld.so.conf.d/").split().count("vlmkit-cudnn.conf") == 0
    assert "release 12.4, V12.4.99" in stage.ssh("bash -lc 'nvcc --version'")

    second = stage.run(settings, log="runfile-second")
    assert second.returncode == 0, tail(second.output)
    assert second.changed == 0, "second run changed:\n" + "\n".join(second.changed_tasks())
    assert "CUDA 12.4: kept: already in /usr/local/cuda-12.4, nvcc V12.4.99" in flat(second)
    assert "cuDNN 9.1.0.70: kept: already installed (tarball)" in flat(second)
