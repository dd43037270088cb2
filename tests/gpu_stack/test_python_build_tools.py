"""The gpu profile's Python can build C extensions, as Triton does at run time (gcc and Python.h)."""

from __future__ import annotations

import pytest

from tests.gpu_stack.stage import flat, tail

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]


@pytest.mark.gpu_host("vlmkit-gpu-45", 45)
def test_gpu_profile_python_gets_a_c_compiler_and_headers_that_build_an_extension(gpu_stage, tmp_path):
    playbook = tmp_path / "python.yml"
    playbook.write_text("- hosts: vlmkit\n  become: true\n  roles:\n    - role: python\n")
    settings = {"vlmkit_profile": "gpu", "python_version": "3.11"}  # Debian 12's own Python on the test host
    run = gpu_stage.run(settings, log="python-build-tools", playbook=str(playbook))
    assert run.returncode == 0, tail(run.output)
    assert "/usr/bin/cc built and /usr/bin/python3.11 imported a C extension against /usr/include/python3.11" in flat(
        run
    )
    # What Triton's launcher build needs, as the service user would find it.
    assert (
        gpu_stage.ssh(
            "runuser -u nobody -- sh -c 'cc --version >/dev/null && test -f /usr/include/python3.11/Python.h && echo ok'"
        ).strip()
        == "ok"
    )
    again = gpu_stage.run(settings, log="python-build-tools-again", playbook=str(playbook))
    assert again.returncode == 0 and again.changed == 0, tail(again.output)
