"""Every `vlmkit ops` task against a deployed test host (real systemd, SSH, the service on the tiny model).

The service listens on the host's loopback only, like a rented server whose one open port is SSH:
the tasks that talk HTTP go through an SSH tunnel. The API key is never set in the tasks'
environment; they read it on the host, and no task may print it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.lab.paths import REPO_ROOT
from tests.lab.waiting import wait_until
from tests.ops.operator import HOST_NAME, LOGS, ops_env

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]

SERVICE_PORT = 8000


def _version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def _image_message(question: str) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}],
    }


def _open_tunnel(deployed):
    tunnel = deployed.start("tunnel", HOST_NAME, "--local-port", "0")
    line = tunnel.wait_for("/v1 (", timeout=90)
    return tunnel, line, re.search(r"(http://127\.0\.0\.1:\d+)/v1", line).group(1)


def test_tunnel_forwards_the_loopback_only_service_to_this_machine(deployed):
    with pytest.raises(OSError):  # from here the service cannot be reached without the tunnel
        socket.create_connection((deployed.host.ip, SERVICE_PORT), timeout=3).close()
    tunnel, line, url = _open_tunnel(deployed)
    try:
        assert "ready, model tiny-mllama" in line and f"127.0.0.1:{SERVICE_PORT} there" in line
        client = openai.OpenAI(base_url=url + "/v1", api_key=deployed.api_key, max_retries=0, timeout=120)
        assert [model.id for model in client.models.list().data] == ["tiny-mllama"]
        answer = client.chat.completions.create(
            model="tiny-mllama",
            max_tokens=8,
            temperature=0,
            extra_body={"min_tokens": 8},
            messages=[_image_message("What colour is this image?")],
        )
        assert isinstance(answer.choices[0].message.content, str) and answer.usage.completion_tokens == 8
        stranger = openai.OpenAI(base_url=url + "/v1", api_key="not-the-key", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
    finally:
        returncode = tunnel.stop(signal.SIGTERM)
    assert returncode == 0
    assert re.search(r"tunnel closed \((\d+) connection", "".join(tunnel.lines)).group(1) != "0"
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # closed with the task
        socket.create_connection(("127.0.0.1", port), timeout=3).close()


def test_status_shows_gpu_service_readiness_model_and_errors(deployed, model_mirror, tmp_path):
    run = deployed.ops("status", HOST_NAME, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    facts = json.loads(run.stdout)
    assert facts["host"]["hostname"] == HOST_NAME and facts["host"]["uptime_s"] > 0
    assert facts["gpu"] == {"available": False, "note": "no NVIDIA GPU/driver on this host", "gpus": []}
    service = facts["service"]
    assert (service["unit"], service["active_state"], service["sub_state"], service["enabled"]) == (
        "vlmkit.service",
        "active",
        "running",
        "enabled",
    )
    assert service["main_pid"] > 1 and service["uptime_s"] > 0 and isinstance(service["restarts"], int)
    ready = facts["ready"]
    assert ready["ready"] is True and ready["model"] == "tiny-mllama" and ready["version"] == _version()
    assert ready["url"] == f"http://127.0.0.1:{SERVICE_PORT}/health/ready"
    model = facts["model"]
    assert (model["repo"], model["revision"], model["sha"], model["complete"]) == (
        "vlmkit-test/tiny-mllama",
        "main",
        model_mirror.sha,
        True,
    )
    assert facts["deploy"]["profile"] == "cpu" and facts["deploy"]["vlmkit"] == _version()
    assert isinstance(facts["errors"], list)
    assert facts["target"]["service"] == f"127.0.0.1:{SERVICE_PORT}"

    screen = deployed.ops("status", HOST_NAME)
    assert screen.returncode == 0, screen.stderr
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "status.txt").write_text(screen.stdout)  # kept for a person to look at
    lines = screen.stdout.splitlines()
    assert lines[0].startswith(f"{HOST_NAME}: {HOST_NAME}, Debian GNU/Linux 12")
    expected = {
        "GPU": "no NVIDIA GPU/driver on this host",
        "Service": f"vlmkit.service active (running), pid {service['main_pid']}",
        "Ready": f"yes: tiny-mllama (vlmkit {_version()}) at http://127.0.0.1:{SERVICE_PORT}",
        "Model": f"vlmkit-test/tiny-mllama @ main (commit {model_mirror.sha[:12]})",
        "Deploy": f"vlmkit {_version()}, profile cpu",
    }
    for title, text in expected.items():
        assert any(line.startswith(title) and text in line for line in lines), (
            f"{title}: {text!r} not in\n{screen.stdout}"
        )

    # The same host as plain user@host:port with a key, no inventory, and a known_hosts that does not
    # know it yet: refused with the fingerprint of the host's key, until the operator accepts it.
    env = {**ops_env(), "HOME": str(tmp_path)}
    plain = ("status", f"root@{deployed.host.ip}:22", "-i", ".cache/test-hosts/ssh/id_ed25519", "--json")
    refused = deployed.ops(*plain, env=env)
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout + refused.stderr
    assert "its SSH host key is not in" in refused.stderr and "--accept-host-key" in refused.stderr, refused.stderr
    host_keys = sorted((deployed.host.root / "etc" / "ssh").glob("ssh_host_*_key.pub"))
    fingerprints = [
        subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True).stdout.split()[1]
        for key in host_keys
    ]
    assert any(fingerprint in refused.stderr for fingerprint in fingerprints), (refused.stderr, fingerprints)
    assert "Traceback" not in refused.stderr
    accepted = deployed.ops(*plain, "--accept-host-key", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["service"]["main_pid"] == service["main_pid"]
    recorded = deployed.ops(*plain, env=env)  # known now: no flag needed
    assert recorded.returncode == 0, recorded.stderr


def test_a_malformed_config_on_the_host_is_a_message_naming_the_field(deployed):
    config = deployed.host.root / "etc" / "vlmkit" / "config.yaml"
    original = config.read_bytes()
    try:
        config.write_bytes(original + b"\nport: eighty\n")
        run = deployed.ops("status", HOST_NAME)
    finally:
        config.write_bytes(original)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "/etc/vlmkit/config.yaml: port must be a port number from 1 to 65535, got 'eighty'" in run.stderr
    assert "Traceback" not in run.stderr


def test_ask_streams_the_answer_through_a_tunnel(deployed, png_file):
    # Greedy and exactly 300 tokens long: a sampled answer may end after a token or two.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.cli",
            "ops",
            "ask",
            HOST_NAME,
            str(png_file),
            "What colour is this image?",
            "--max-tokens",
            "300",
            "--min-tokens",
            "300",
            "--temperature",
            "0",
            "--timeout",
            "120",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ops_env(),
    )
    reads = []
    while chunk := os.read(process.stdout.fileno(), 65536):
        reads.append(chunk)
    stderr = process.communicate(timeout=120)[1].decode()
    text = b"".join(reads).decode()
    deployed.outputs.append(text + stderr)
    assert process.returncode == 0, stderr
    assert text.strip(), "no answer printed"
    assert len(reads) >= 3, f"the answer came in {len(reads)} piece(s): not streamed"


def test_logs_show_a_request_made_through_the_tunnel(deployed):
    tunnel, _, url = _open_tunnel(deployed)
    try:
        # A long generation the client gives up on after 2 s: the service notes that it cancels it.
        impatient = openai.OpenAI(base_url=url + "/v1", api_key=deployed.api_key, max_retries=0, timeout=2)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(
                model="tiny-mllama",
                max_tokens=4000,
                extra_body={"min_tokens": 4000},
                messages=[_image_message("Describe this image at length.")],
            )
    finally:
        tunnel.stop()
    seen: list[subprocess.CompletedProcess] = []

    def logged():
        seen.append(deployed.ops("logs", HOST_NAME, "--since", "5 min ago", "-n", "200"))
        assert seen[-1].returncode == 0, seen[-1].stderr
        return "client disconnected: cancelling its generation" in seen[-1].stdout and seen[-1]

    logs = wait_until(logged, 60, lambda: f"the request in the logs:\n{seen[-1].stdout[-3000:]}", interval=2)
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+ " + HOST_NAME + r" vlmkit\[\d+\]: ", logs.stdout, re.MULTILINE), logs.stdout
    only = deployed.ops("logs", HOST_NAME, "--grep", "client disconnected", "-n", "20")
    matching = [line for line in only.stdout.splitlines() if HOST_NAME in line]
    assert matching and all("client disconnected" in line for line in matching), only.stdout


def test_restart_waits_until_ready_and_logs_follow_shows_it(deployed):
    before = int(deployed.host.ssh("systemctl show -P MainPID vlmkit").stdout)
    follow = deployed.start("logs", HOST_NAME, "--follow", "-n", "1")
    try:
        follow.wait_for(HOST_NAME, timeout=60)  # following: the last line is there
        seen = len(follow.lines)
        run = deployed.ops("restart", HOST_NAME)
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(
            rf"vlmkit.service restarted \(pid {before} -> \d+\); ready after [\d.]+ s, model tiny-mllama", run.stdout
        ), run.stdout
        after = int(deployed.host.ssh("systemctl show -P MainPID vlmkit").stdout)
        assert after not in (0, before)
        _wait_ready_on_host(deployed.host, timeout=5)
        follow.wait_for("serving tiny-mllama from", timeout=60, after=seen)  # the new start, live
    finally:
        returncode = follow.stop(signal.SIGINT)
    assert returncode == 0
    # Ctrl-C reached journalctl --follow on the host too.
    wait_until(
        lambda: deployed.host.ssh("pgrep -f 'journalctl -u vlmkit.service'", check=False).returncode != 0,
        20,
        "journalctl --follow to end on the host",
        interval=1,
    )


def _wait_ready_on_host(host, timeout: float = 120) -> None:
    probe = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health/ready').status)\""
    wait_until(
        lambda: host.ssh(probe, check=False).stdout.strip() == "200",
        timeout,
        "the service to get ready again",
        interval=1,
    )


def test_tunnel_outlives_a_stopped_service_and_a_dropped_ssh_connection(deployed):
    tunnel, _, url = _open_tunnel(deployed)
    client = openai.OpenAI(base_url=url + "/v1", api_key=deployed.api_key, max_retries=0, timeout=60)
    try:
        assert client.models.list().data[0].id == "tiny-mllama"
        deployed.host.ssh("systemctl stop vlmkit")
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
        tunnel.wait_for(f"the server refused the connection to 127.0.0.1:{SERVICE_PORT}", timeout=30)
        down = deployed.ops("status", HOST_NAME)
        assert down.returncode == 3, down.stdout + down.stderr  # not ready: a script can tell
        assert "Service vlmkit.service inactive (dead)" in down.stdout and "Ready   NO: " in down.stdout
        deployed.host.ssh("systemctl start vlmkit")
        _wait_ready_on_host(deployed.host)
        assert client.models.list().data[0].id == "tiny-mllama"  # the same tunnel, still forwarding

        # Drop the SSH connection under the tunnel: end the server's sshd process of that connection (by pid).
        local = subprocess.run(
            ["ss", "-tnpH", "state", "established", "dst", f"{deployed.host.ip}:22"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ours = [line for line in local.splitlines() if f"pid={tunnel.process.pid}," in line]
        assert len(ours) == 1, local
        ssh_port = ours[0].split()[2].rsplit(":", 1)[1]
        remote = deployed.host.ssh(f"ss -tnpH state established '( sport = :22 and dport = :{ssh_port} )'").stdout
        sshd_pids = re.findall(r"pid=(\d+)", remote)
        assert sshd_pids, remote
        deployed.host.ssh(f"kill {' '.join(sshd_pids)}")

        def model_listed() -> bool:
            try:
                return client.models.list().data[0].id == "tiny-mllama"
            except openai.APIConnectionError:
                return False

        wait_until(model_listed, 30, "the tunnel to connect again", interval=1)
        tunnel.wait_for("dropped; connecting again", timeout=5)
    finally:
        tunnel.stop()


def test_gpu_watch_says_so_on_a_host_without_nvidia(deployed):
    run = deployed.ops("gpu-watch", HOST_NAME, "--count", "1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no NVIDIA GPU/driver on this host"


# What nvidia-smi prints on an H800 host for the queries the tasks make (driver 550.54.14, CUDA 12.4).
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=*) echo "0, NVIDIA H800 PCIe, 52113, 81559, 87, 64, 550.54.14" ;;
  *--query-compute-apps=*) echo "GPU-5d1f0c3e-7c2b-4bd1-9c5f-2a0e8d6b1f42, 4242, /opt/vlmkit/venv/bin/python3, 51200" ;;
  *) echo "| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      CUDA Version: 12.4     |" ;;
esac
"""


def test_gpu_watch_and_status_read_what_nvidia_smi_reports(deployed):
    # No GPU here: a stand-in nvidia-smi prints real-format answers, so the parsing and the screens run.
    (Path(deployed.host.root) / "usr/local/bin/nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (Path(deployed.host.root) / "usr/local/bin/nvidia-smi").chmod(0o755)
    try:
        watch = deployed.ops("gpu-watch", HOST_NAME, "--count", "2", "--interval", "0.5")
        assert watch.returncode == 0, watch.stderr
        gpu_lines = [line for line in watch.stdout.splitlines() if line.startswith("GPU 0")]
        assert len(gpu_lines) == 2, watch.stdout
        for piece in ("NVIDIA H800 PCIe", "52113 / 81559 MiB (64%)", "util 87%", "temp 64 °C"):
            assert piece in gpu_lines[0]
        assert "pid 4242 /opt/vlmkit/venv/bin/python3: 51200 MiB" in watch.stdout
        facts = json.loads(deployed.ops("status", HOST_NAME, "--json").stdout)
        assert facts["gpu"]["available"] and facts["gpu"]["driver"] == "550.54.14" and facts["gpu"]["cuda"] == "12.4"
        assert facts["gpu"]["gpus"][0] == {
            "index": 0,
            "name": "NVIDIA H800 PCIe",
            "memory_used_mib": 52113,
            "memory_total_mib": 81559,
            "utilization_percent": 87,
            "temperature_c": 64,
            "driver": "550.54.14",
        }
        screen = deployed.ops("status", HOST_NAME).stdout
        assert "Driver  550.54.14, CUDA 12.4" in screen
    finally:
        (Path(deployed.host.root) / "usr/local/bin/nvidia-smi").unlink(missing_ok=True)


def test_usecases_plumbing_mode_against_the_host(deployed):
    run = deployed.ops("usecases", HOST_NAME, "--plumbing")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "plumbing: 8/8 answers arrived in 5 cases" in run.stdout


def test_smoke_suite_passes_against_the_host(deployed):
    run = deployed.ops(
        "smoke", HOST_NAME, "--inventory", "inventory/test-ops/hosts.yml", "--pytest-args=-rA", timeout=600
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "PASSED tests/smoke/test_deployment.py::test_chat_completion_with_an_image_returns_text" in run.stdout
    assert re.search(r"\d+ passed", run.stdout) and "failed" not in run.stdout.splitlines()[-1]


def test_no_task_printed_the_api_key(deployed):
    assert len(deployed.outputs) >= 10
    assert not [output[:200] for output in deployed.outputs if deployed.api_key in output]
