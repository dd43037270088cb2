"""The pieces of `vlmkit ops` that need no host: finding the target, reading nvidia-smi and the journal,
the status screen, the tunnel's port."""

from __future__ import annotations

import socket

import pytest

from inference.ops import probe
from inference.ops.status import duration, render
from inference.ops.target import OpsError, from_hostvars, resolve
from inference.ops.tasks import find_checkout
from inference.ops.tunnel import Tunnel
from tests.lab.paths import REPO_ROOT

TEST_INVENTORY_VARS = {
    "ansible_host": "10.213.0.11",
    "ansible_user": "root",
    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    "ansible_ssh_private_key_file": ".cache/test-hosts/ssh/id_ed25519",
    "inference_service_host": "{{ ansible_host }}",
    "inference_service_settings": {"default_max_tokens": 16},
}


def test_inventory_variables_give_the_connection_and_the_service_address():
    target = from_hostvars("vlmkit-test-1", TEST_INVENTORY_VARS, "inventory/test")
    assert (target.address, target.user, target.port) == ("10.213.0.11", "root", None)
    assert target.key_file == ".cache/test-hosts/ssh/id_ed25519"
    assert target.check_host_keys is False  # the inventory turns host key checking off
    assert target.service_host == "10.213.0.11"  # "{{ ansible_host }}" resolved from the same host
    assert (target.service_port, target.unit, target.env_file) == (8000, "vlmkit", "/etc/vlmkit/vlmkit.env")
    assert not target.needs_sudo


def test_a_become_user_gets_sudo_and_a_real_template_is_left_to_the_host():
    target = from_hostvars(
        "gpu-server-1",
        {
            "ansible_host": "203.0.113.10",
            "ansible_user": "ubuntu",
            "ansible_become": True,
            "ansible_port": 2222,
            "inference_service_host": "{{ '0.0.0.0' if public else '127.0.0.1' }}",
            "inference_service_port": 9000,
            "inference_service_name": "vision",
        },
    )
    assert target.needs_sudo and target.check_host_keys and target.port == 2222
    assert (target.service_host, target.service_port) == ("127.0.0.1", 9000)
    assert target.env_file == "/etc/vlmkit/vision.env"


def test_plain_user_host_port_needs_no_inventory():
    target = resolve("ubuntu@203.0.113.10:2222", inventory="inventory/example")
    assert (target.user, target.address, target.port, target.inventory) == ("ubuntu", "203.0.113.10", 2222, None)
    assert target.needs_sudo
    ipv6 = resolve("root@[2001:db8::1]:22", inventory="inventory/example")
    assert (ipv6.address, ipv6.port) == ("2001:db8::1", 22)


def test_an_inventory_host_is_found_by_name_with_ansible_inventory():
    target = resolve("vlmkit-ops-1", inventory=str(REPO_ROOT / "inventory" / "test-ops"))
    assert (target.address, target.user, target.service_host) == ("10.213.0.31", "root", "127.0.0.1")
    assert target.inventory.endswith("test-ops")
    # A name the inventory lacks is taken as a host name (an ssh_config alias, say).
    other = resolve("my-alias", inventory=str(REPO_ROOT / "inventory" / "test-ops"))
    assert (other.address, other.inventory) == ("my-alias", None)


def test_a_missing_inventory_named_explicitly_is_an_error():
    with pytest.raises(OpsError, match="no inventory at"):
        resolve("gpu-server-1", inventory="inventory/nowhere")


NVIDIA_GPUS = (
    "0, NVIDIA H800 PCIe, 52113, 81559, 87, 64, 550.54.14\n1, NVIDIA H800 PCIe, 4, 81559, 0, [N/A], 550.54.14\n"
)


def test_nvidia_smi_csv_is_parsed_with_missing_values_as_none():
    gpus = probe.parse_gpus(NVIDIA_GPUS)
    assert gpus[0] == {
        "index": 0,
        "name": "NVIDIA H800 PCIe",
        "memory_used_mib": 52113,
        "memory_total_mib": 81559,
        "utilization_percent": 87,
        "temperature_c": 64,
        "driver": "550.54.14",
    }
    assert gpus[1]["temperature_c"] is None
    apps = probe.parse_apps("GPU-5d1f, 4242, /opt/vlmkit/venv/bin/python3, 51200\n")
    assert apps == [
        {"gpu_uuid": "GPU-5d1f", "pid": 4242, "process": "/opt/vlmkit/venv/bin/python3", "memory_used_mib": 51200}
    ]
    assert (
        probe.parse_cuda_version("| NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4 |") == "12.4"
    )


def test_error_lines_pick_failures_from_the_journal():
    journal = "\n".join(
        [
            "2025-01-01T10:00:00+0000 h vlmkit[1]: 2025-01-01 10:00:00 INFO vlmkit: serving tiny from /m",
            "2025-01-01T10:01:00+0000 h vlmkit[1]: 2025-01-01 10:01:00 ERROR inference.engine: generation failed",
            "2025-01-01T10:01:00+0000 h vlmkit[1]: Traceback (most recent call last):",
            "2025-01-01T10:02:00+0000 h systemd[1]: vlmkit.service: Main process exited, code=killed, status=9/KILL",
            "2025-01-01T10:02:00+0000 h systemd[1]: vlmkit.service: Failed with result 'signal'.",
            "2025-01-01T10:02:03+0000 h systemd[1]: Started vlmkit.service - vlmkit.",
            "2025-01-01T10:03:00+0000 h systemd[1]: vlmkit.service: Main process exited, code=exited, status=0/SUCCESS",
        ]
    )
    errors = probe.error_lines(journal)
    assert [line.split(": ", 1)[1][:25] for line in errors] == [
        "2025-01-01 10:01:00 ERROR",
        "Traceback (most recent ca",
        "vlmkit.service: Main proc",
        "vlmkit.service: Failed wi",
    ]
    assert probe.error_lines(journal, keep=1) == errors[-1:]


FACTS = {
    "host": {"hostname": "gpu-server-1", "os": "Ubuntu 22.04.5 LTS", "uptime_s": 90061, "load": [1.0, 0.5, 0.25]},
    "gpu": {
        "available": True,
        "note": None,
        "gpus": probe.parse_gpus(NVIDIA_GPUS),
        "driver": "550.54.14",
        "cuda": "12.4",
        "processes": [],
    },
    "service": {
        "unit": "vlmkit.service",
        "active_state": "active",
        "sub_state": "running",
        "main_pid": 4242,
        "restarts": 1,
        "enabled": "enabled",
        "result": "success",
        "uptime_s": 3725,
        "error": None,
    },
    "ready": {
        "url": "http://127.0.0.1:8000/health/ready",
        "ready": True,
        "http_status": 200,
        "status": "ready",
        "model": "Llama-3.2-90B-Vision-Instruct-bnb-4bit",
        "version": "0.1.0",
    },
    "model": {
        "path": "/data/models/llama",
        "complete": True,
        "repo": "unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit",
        "revision": "main",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "files": 19,
        "bytes": 1,
    },
    "deploy": {
        "vlmkit": "0.1.0",
        "profile": "gpu",
        "deployed_from": "abcdef0123456789",
        "cuda_toolkit": "12.4.0",
        "torch": "2.13.0",
    },
    "errors": [],
}


def test_status_screen_has_one_line_per_subject():
    screen = render("gpu-server-1", FACTS).splitlines()
    assert screen[0] == "gpu-server-1: gpu-server-1, Ubuntu 22.04.5 LTS, up 1 d 1 h, load 1.00 0.50 0.25"
    assert screen[1] == "GPU     GPU 0  NVIDIA H800 PCIe         52113 / 81559 MiB (64%)   util 87%   temp 64 °C"
    assert screen[2].startswith("        GPU 1") and "temp n/a" in screen[2]
    assert screen[3] == "Driver  550.54.14, CUDA 12.4, toolkit 12.4.0"
    assert screen[4] == "Service vlmkit.service active (running), pid 4242, up 1 h 2 min, restarts 1, enabled"
    assert screen[5] == "Ready   yes: Llama-3.2-90B-Vision-Instruct-bnb-4bit (vlmkit 0.1.0) at http://127.0.0.1:8000"
    assert screen[6] == (
        "Model   unsloth/Llama-3.2-90B-Vision-Instruct-bnb-4bit @ main (commit 0123456789ab) in /data/models/llama"
    )
    assert screen[8] == "Errors  none in the unit's journal"


def test_status_screen_when_not_ready_and_without_gpu():
    facts = {
        **FACTS,
        "gpu": {"available": False, "note": probe.NO_GPU, "gpus": []},
        "ready": {"url": "http://127.0.0.1:8000/health/ready", "ready": False, "http_status": 503, "status": "loading"},
        "errors": ["2025-01-01T10:02:00+0000 h systemd[1]: vlmkit.service: Failed with result 'signal'."],
    }
    screen = render("gpu-server-1", facts)
    assert "GPU     no NVIDIA GPU/driver on this host" in screen
    assert "Ready   NO: loading" in screen
    assert "Errors  last 1:\n        2025-01-01T10:02:00" in screen


def test_duration_reads_like_a_person_writes_it():
    assert [duration(s) for s in (None, 5, 65, 3725, 90061)] == ["-", "5 s", "1 min 5 s", "1 h 2 min", "1 d 1 h"]


def test_tunnel_on_a_busy_port_says_which_and_what_to_do():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OpsError, match=f"cannot listen on 127.0.0.1:{port}.*--local-port"):
            Tunnel(None, "127.0.0.1", 8000, local_port=port)


def test_smoke_finds_the_checkout_from_a_folder_inside_it(tmp_path):
    assert find_checkout(REPO_ROOT / "inference" / "ops") == REPO_ROOT
    assert find_checkout(tmp_path) is None


def _host_key(tmp_path):
    """A real ed25519 host key made by ssh-keygen, and the fingerprint ssh-keygen prints for it."""
    import subprocess

    from paramiko import Ed25519Key

    key_file = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    printed = subprocess.run(
        ["ssh-keygen", "-lf", f"{key_file}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    return Ed25519Key(filename=str(key_file)), printed


def test_an_unknown_host_key_is_refused_with_its_fingerprint(tmp_path, monkeypatch):
    from paramiko import SSHClient

    from inference.ops.hostkeys import UnknownHostKeyPolicy

    monkeypatch.setenv("HOME", str(tmp_path))
    key, printed = _host_key(tmp_path)
    with pytest.raises(OpsError) as refused:
        UnknownHostKeyPolicy("gpu-server-1", accept=False).missing_host_key(SSHClient(), "[203.0.113.10]:2222", key)
    message = str(refused.value)
    assert message.startswith("gpu-server-1: its SSH host key is not in")
    assert f"ssh-ed25519 {printed}" in message and "--accept-host-key" in message
    assert not (tmp_path / ".ssh" / "known_hosts").exists()


def test_an_accepted_host_key_is_recorded_where_ssh_finds_it(tmp_path, monkeypatch):
    import subprocess

    from paramiko import SSHClient

    from inference.ops.hostkeys import UnknownHostKeyPolicy

    monkeypatch.setenv("HOME", str(tmp_path))
    key, printed = _host_key(tmp_path)
    client = SSHClient()
    UnknownHostKeyPolicy("gpu-server-1", accept=True).missing_host_key(client, "[203.0.113.10]:2222", key)
    assert client.get_host_keys().lookup("[203.0.113.10]:2222")["ssh-ed25519"] == key
    known_hosts = tmp_path / ".ssh" / "known_hosts"
    assert known_hosts.stat().st_mode & 0o077 == 0
    found = subprocess.run(
        ["ssh-keygen", "-F", "[203.0.113.10]:2222", "-f", str(known_hosts), "-l"], capture_output=True, text=True
    )
    assert found.returncode == 0 and printed in found.stdout, found.stdout + found.stderr


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("port: eighty\n", "port must be a port number"),
        ("port: 70000\n", "port must be a port number"),
        ("host: [127.0.0.1]\n", "host must be a non-empty string"),
        ("model_path: 42\n", "model_path must be a non-empty string"),
        ("port: 8000\n\thost: 0.0.0.0\n", "is not valid YAML at line 2"),
        ("- port: 8000\n", "must be a mapping of settings"),
    ],
)
def test_a_malformed_deployed_config_names_the_field(text, field):
    from inference.ops.config import parse_service_config

    with pytest.raises(OpsError, match=r"^gpu-server-1: /etc/vlmkit/config\.yaml") as refused:
        parse_service_config(text, "gpu-server-1: /etc/vlmkit/config.yaml")
    assert field in str(refused.value)


def test_a_deployed_config_gives_the_bind_address_port_and_model_path():
    from inference.ops.config import ServiceConfig, parse_service_config

    text = "host: 0.0.0.0\nport: 9000\nmodel_path: /data/model\nbackend: transformers\n"
    assert parse_service_config(text, "x") == ServiceConfig("0.0.0.0", 9000, "/data/model")
    assert parse_service_config("", "x") == ServiceConfig()


@pytest.mark.parametrize("variable", ["ansible_port", "inference_service_port"])
def test_an_inventory_port_that_is_not_a_number_names_the_variable(variable):
    with pytest.raises(OpsError, match=f"gpu-server-1 in inventory/prod: {variable} must be a port number"):
        from_hostvars("gpu-server-1", {"ansible_host": "203.0.113.10", variable: "twenty-two"}, "inventory/prod")
