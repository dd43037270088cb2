"""End to end: site.yml on a fresh host, smoke suite, idempotent second run, kill, reboot."""

from __future__ import annotations

import io
import json
import os
import subprocess
import textwrap
import time
import urllib.request

import pytest
import yaml

from tests.lab.deploy import PlaybookRun, run_playbook, run_smoke
from tests.lab.paths import CACHE_DIR
from tests.lab.waiting import wait_until

LOGS = CACHE_DIR / "run" / "e2e"
PORT = 8000  # the role's default, which inventory/test keeps


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _closing_message(run: PlaybookRun) -> list[str]:
    """The lines of the message that ends the play: the URL and the example request."""
    lines = run.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Show where the service answers" in line)
    block = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        block.append(line)
    return yaml.safe_load(textwrap.dedent("\n".join(block)))["msg"].splitlines()


def _wait_ready(ip: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://{ip}:{PORT}/health/ready", timeout=3) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"http://{ip}:{PORT}/health/ready did not answer 200 within {timeout} s")


def _main_pid(host) -> str:
    return host.ssh("systemctl show -P MainPID vlmkit").stdout.strip()


def _jpeg(path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())


@pytest.mark.hosts
@pytest.mark.timeout(3600)
def test_site_deploys_a_fresh_host_idempotently_and_the_service_survives_kill_and_reboot(
    fresh_host, model_mirror, vault_secrets, tmp_path
):
    timings: dict[str, float] = {}

    # 1. A fresh host, bare Debian 12, to the running service.
    first = run_playbook("site.yml", vault_secrets, log=LOGS / "site-first.log")
    timings["site.yml first run"] = first.seconds
    assert first.returncode == 0, f"site.yml failed:\n{_tail(first.output)}"
    for secret in vault_secrets.values():
        assert secret not in first.output, "a secret showed up in the Ansible output"

    # The play ends with the URL and an example request; the example works as printed.
    message = _closing_message(first)
    assert f"http://{fresh_host.ip}:{PORT}/v1" in message[0]
    start = next(i for i, line in enumerate(message) if line.strip().startswith("IMG="))
    example_script = textwrap.dedent("\n".join(message[start:]))
    _jpeg(tmp_path / "photo.jpg")
    example = subprocess.run(
        ["bash", "-c", example_script], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, VLMKIT_API_KEY=vault_secrets.api_key), timeout=120,
    )  # fmt: skip
    assert example.returncode == 0, example.stderr
    assert json.loads(example.stdout)["choices"][0]["message"]["content"], example.stdout

    # 2. The smoke suite, as an operator runs it, against the inventory host.
    started = time.monotonic()
    smoke = run_smoke(fresh_host.name)
    timings["smoke suite"] = time.monotonic() - started
    (LOGS / "smoke-first.log").write_text(smoke.stdout + smoke.stderr)
    assert smoke.returncode == 0, f"smoke suite failed:\n{_tail(smoke.stdout)}"

    # 3. Deploying again from the same checkout changes nothing.
    second = run_playbook("site.yml", vault_secrets, log=LOGS / "site-second.log")
    timings["site.yml second run"] = second.seconds
    assert second.returncode == 0, f"second site.yml failed:\n{_tail(second.output)}"
    assert second.changed == 0, "second run changed:\n" + "\n".join(second.changed_tasks())

    # 4. Killed, the service is brought back by systemd and gets ready again.
    old_pid = _main_pid(fresh_host)
    started = time.monotonic()
    fresh_host.ssh(f"kill -KILL {old_pid}")
    wait_until(
        lambda: _main_pid(fresh_host) not in ("0", "", old_pid),
        60,
        "systemd to restart the killed service",
        interval=0.5,
    )
    _wait_ready(fresh_host.ip, timeout=300)
    timings["killed -> ready"] = time.monotonic() - started
    assert int(fresh_host.ssh("systemctl show -P NRestarts vlmkit").stdout.strip()) >= 1

    # 5. After a reboot (the container restarted), the service comes back ready on its own.
    started = time.monotonic()
    fresh_host.reboot()
    timings["reboot -> SSH"] = time.monotonic() - started
    _wait_ready(fresh_host.ip, timeout=300)
    timings["reboot -> ready"] = time.monotonic() - started
    assert fresh_host.ssh("systemctl is-enabled vlmkit").stdout.strip() == "enabled"

    # 6. And the smoke suite still passes after the reboot.
    smoke_again = run_smoke(fresh_host.name)
    (LOGS / "smoke-after-reboot.log").write_text(smoke_again.stdout + smoke_again.stderr)
    assert smoke_again.returncode == 0, f"smoke suite failed after reboot:\n{_tail(smoke_again.stdout)}"

    # 7. A host that drifts from the lock fails the smoke suite (a package the lock does not list).
    site_packages = fresh_host.ssh(
        "/opt/vlmkit/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'"
    ).stdout.strip()
    probe = f"{site_packages}/vlmkit_drift_probe-1.0.dist-info"
    fresh_host.ssh(
        f"mkdir {probe} && printf 'Metadata-Version: 2.1\\nName: vlmkit-drift-probe\\nVersion: 1.0\\n' > {probe}/METADATA"
    )
    drifted = run_smoke(fresh_host.name, extra_args=("-k", "pinned_set"))
    assert drifted.returncode != 0 and "vlmkit-drift-probe" in drifted.stdout, drifted.stdout[-3000:]
    fresh_host.ssh(f"rm -r {probe}")

    (LOGS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2) + "\n")
    print("e2e timings (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in timings.items()))


@pytest.mark.hosts
@pytest.mark.timeout(600)
def test_python_role_names_the_options_when_the_distro_lacks_the_version(fresh_host, vault_secrets):
    # Debian 12 ships Python 3.11 and no 3.12: the role must stop and say what to do instead.
    run = run_playbook(
        "python.yml", vault_secrets, extra_args=("-e", "python_version=3.12"), log=LOGS / "python-3.12.log"
    )
    assert run.returncode != 0
    assert "Python 3.12 is not packaged for Debian-12 (its python3 is 3.11)" in run.output, _tail(run.output)
    for option in ('python_version: "3.11"', "python_provider: conda", "Ubuntu 24.04"):
        assert option in run.output
    assert run.changed == 0, "the role changed the host before refusing: " + ", ".join(run.changed_tasks())
