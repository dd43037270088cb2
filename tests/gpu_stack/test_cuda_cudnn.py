"""cuda_toolkit and cudnn against the STAND-IN NVIDIA mirror (tests/gpu_stack/standin.py): NVIDIA's
package names, versions and layout, a signed flat repository, a runfile with the real installer's
toolkit interface, the cuDNN archive. The hosts are Debian 12 containers; the STAND-IN nvidia-smi
plays the driver their machine would provide.
"""

from __future__ import annotations

import pytest

from tests.gpu_stack.conftest import flat, tail
from tests.gpu_stack.standin import BROKEN_RUNFILE, CUDNN_ARCHIVE, RUNFILE

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]

DRIVER_550 = {"driver_version": "550.54.15", "cuda_version": "12.4", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}]}


@pytest.mark.gpu_host("vlmkit-gpu-42", 42)
def test_apt_installs_cuda_124_and_cudnn_910_pinned_and_held_from_a_mirror_idempotently(gpu_stage):
    stage = gpu_stage
    stage.install_standin_nvidia_smi(DRIVER_550)

    # Check mode on a fresh host says what it would do and changes nothing.
    check = stage.run({}, "--check", log="apt-check-fresh")
    assert check.returncode == 0, tail(check.output)
    assert "CUDA 12.4: would be installed (apt) in /usr/local/cuda-12.4 (check mode)" in flat(check)
    assert "cuDNN 9.1.0.70: would be installed (apt) (check mode)" in flat(check)
    assert stage.ssh("ls /etc/apt/sources.list.d/; dpkg-query -W cuda-keyring cuda-toolkit-12-4 2>&1", check=False).strip() \
        .endswith("no packages found matching cuda-toolkit-12-4"), "check mode installed something"

    first = stage.run(log="apt-first")
    assert first.returncode == 0, tail(first.output)
    assert "CUDA 12.4: installed (apt) in /usr/local/cuda-12.4, nvcc V12.4.131" in flat(first)
    assert "cuDNN 9.1.0.70: installed (apt), verified 9.1.0 (/usr/lib/x86_64-linux-gnu/libcudnn.so.9: 90100)" in flat(first)

    # Pinned (the mirror's newer cuDNN 9.8 was not taken) and held.
    installed = stage.ssh("dpkg-query -W -f '${Package}=${Version}\\n' cuda-keyring cuda-toolkit-12-4 libcudnn9-cuda-12 libcudnn9-dev-cuda-12")
    assert installed.split() == ["cuda-keyring=1.1-1", "cuda-toolkit-12-4=12.4.1-1", "libcudnn9-cuda-12=9.1.0.70-1",
                                 "libcudnn9-dev-cuda-12=9.1.0.70-1"]
    assert "Candidate: 9.8.0.87-1" in stage.ssh("apt-cache policy libcudnn9-cuda-12")
    assert set(stage.ssh("apt-mark showhold").split()) >= {"cuda-keyring", "cuda-toolkit-12-4", "libcudnn9-cuda-12", "libcudnn9-dev-cuda-12"}

    # One source, deb822, with the mirror's URL; the keyring package's own list is gone.
    sources = stage.ssh("ls /etc/apt/sources.list.d/").split()
    assert "vlmkit-cuda.sources" in sources and "cuda-debian12-x86_64.list" not in sources, sources
    assert f"URIs: {stage.standin.url}/compute/cuda/repos/debian12/x86_64/" in stage.ssh("cat /etc/apt/sources.list.d/vlmkit-cuda.sources")

    # A login shell finds nvcc through /etc/profile.d; the linker finds the libraries; no .bashrc edits.
    login = stage.ssh("bash -lc 'nvcc --version; echo CUDA_HOME=$CUDA_HOME'")
    assert "release 12.4, V12.4.131" in login and "CUDA_HOME=/usr/local/cuda-12.4" in login
    assert "=> /usr/local/cuda-12.4/lib64/libcudart.so.12" in stage.ssh("ldconfig -p")
    assert "cuda" not in stage.ssh("cat /root/.bashrc /root/.profile 2>/dev/null", check=False)

    second = stage.run(log="apt-second")
    assert second.returncode == 0, tail(second.output)
    assert second.changed == 0, "second run changed:\n" + "\n".join(second.changed_tasks())
    assert "CUDA 12.4: kept: already in /usr/local/cuda-12.4, nvcc V12.4.131" in flat(second)
    assert "cuDNN 9.1.0.70: kept: already installed (apt)" in flat(second)

    again = stage.run({}, "--check", log="apt-check-converged")
    assert again.returncode == 0 and again.changed == 0, tail(again.output)


@pytest.mark.gpu_host("vlmkit-gpu-43", 43)
def test_runfile_through_a_proxy_and_the_cudnn_archive_offline_and_a_wrong_runfile_is_caught(gpu_stage, proxy):
    stage = gpu_stage
    stage.install_standin_nvidia_smi(DRIVER_550)
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
    assert "cuDNN 9.1.0.70: installed (tarball), verified 9.1.0 (/usr/local/cudnn-9.1.0.70/lib/libcudnn.so.9: 90100)" in flat(first)
    assert f"{stage.standin.url}/compute/cuda/12.4.0/local_installers/{RUNFILE}" in proxy.requests
    assert not [path for path in stage.standin.requests if CUDNN_ARCHIVE in path], "the offline archive was downloaded"
    assert stage.ssh("ls /var/tmp/vlmkit-gpu/").split() == [], "installers were left behind"
    assert "/usr/local/cudnn-9.1.0.70/lib" in stage.ssh("cat /etc/ld.so.conf.d/vlmkit-cudnn.conf")
    assert "release 12.4, V12.4.99" in stage.ssh("bash -lc 'nvcc --version'")

    second = stage.run(settings, log="runfile-second")
    assert second.returncode == 0, tail(second.output)
    assert second.changed == 0, "second run changed:\n" + "\n".join(second.changed_tasks())
    assert "CUDA 12.4: kept: already in /usr/local/cuda-12.4, nvcc V12.4.99" in flat(second)
    assert "cuDNN 9.1.0.70: kept: already installed (tarball)" in flat(second)
