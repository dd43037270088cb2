"""GPU checks after a deploy, where the host has an NVIDIA GPU: what the service needs, proven as the
service user inside the unit's own sandbox (not as root), and the running service holding the GPU.

Root sees the GPU on a host whose unit cannot (a device rule, a cache under a read-only /): so every
check here runs in a transient unit (systemd-run) with the service unit's sandbox properties, read
from the installed unit itself.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("gpu_probe.py")

# The service unit's [Service] settings that make its sandbox; everything else (ExecStart, restart
# policy, the secrets' EnvironmentFile) stays out of the transient unit.
SANDBOX_SETTINGS = {
    "User",
    "Group",
    "Environment",
    "WorkingDirectory",
    "CacheDirectory",
    "CacheDirectoryMode",
    "UMask",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "DevicePolicy",
    "DeviceAllow",
    "PrivateUsers",
    "PrivateIPC",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "ProcSubset",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RestrictAddressFamilies",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "BindReadOnlyPaths",
    "BindPaths",
    "InaccessiblePaths",
}
CHECKS = (
    "torch_sees_the_gpu",
    "bf16_matmul",
    "cudnn_conv2d",
    "bitsandbytes_4bit_forward",
    "triton_kernel",
    "nf4_one_row_kernel",
)


def unit_sandbox(deployment) -> list[str]:
    """`-p KEY=VALUE` for each sandbox line of the installed unit and its drop-ins, in order."""
    with deployment.host.sudo():
        text = deployment.host.check_output(f"systemctl cat --no-pager {deployment.unit}.service")
    properties, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key = line.split("=", 1)[0].strip()
            if key in SANDBOX_SETTINGS:
                properties += ["-p", line]
    return properties


@pytest.fixture(scope="module")
def gpu(deployment):
    if deployment.host.run("command -v nvidia-smi && nvidia-smi -L").rc != 0:
        pytest.skip(f"no NVIDIA GPU on this host (profile {deployment.profile}); GPU checks run where one is")
    return deployment


@pytest.fixture(scope="module")
def sandbox_report(gpu) -> dict:
    # Triton reads a kernel's source from its file: the probe runs from a file in the unit's private /tmp.
    launcher = (
        "import pathlib, runpy, sys, tempfile; path = pathlib.Path(tempfile.mkdtemp()) / 'gpu_probe.py';"
        " path.write_text(sys.argv[1]); runpy.run_path(str(path), run_name='__main__')"
    )
    command = [
        "systemd-run",
        "--wait",
        "--pipe",
        "--collect",
        "--quiet",
        "--unit",
        f"{gpu.unit}-gpu-smoke",
        *unit_sandbox(gpu),
        gpu.python,
        "-c",
        launcher,
        PROBE.read_text(),
    ]
    with gpu.host.sudo():
        result = gpu.host.run(" ".join(shlex.quote(part) for part in command))
    assert result.rc == 0, f"the probe did not run in the unit's sandbox ({result.rc}): {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", CHECKS)
def test_gpu_works_as_the_service_user_inside_the_unit_sandbox(sandbox_report, check):
    outcome = sandbox_report.get(check)
    assert outcome is not None, f"{check} did not run: {sandbox_report}"
    assert outcome["ok"], f"{check} failed inside the unit's sandbox: {outcome['error']}\n{outcome.get('where', '')}"


def main_pid(deployment) -> int:
    return int(deployment.host.check_output(f"systemctl show -p MainPID --value {deployment.unit}"))


def allocated_gpu_bytes(deployment) -> float:
    status, text = deployment.request("GET", "/metrics", auth="none")
    assert status == 200, f"/metrics answered {status}"
    values = re.findall(r"^vlmkit_gpu_memory_allocated_bytes\{[^}]*\} ([0-9.e+]+)$", text, flags=re.MULTILINE)
    return sum(float(value) for value in values)


def test_service_process_holds_gpu_memory(gpu):
    pid = main_pid(gpu)
    assert pid > 0, f"{gpu.unit} has no main process"
    listed = gpu.host.run("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits")
    assert listed.rc == 0, listed.stderr
    pids = {int(line.split(",")[0]) for line in listed.stdout.splitlines() if line.strip()}
    if pids:
        assert pid in pids, f"nvidia-smi lists compute processes {sorted(pids)}, not the service's {pid}"
    else:
        # Inside a PID namespace (a container host) nvidia-smi lists no processes: check the process's
        # own open GPU nodes and the memory torch reports in its /metrics instead.
        with gpu.host.sudo():
            nodes = gpu.host.run(f"ls -l /proc/{pid}/fd").stdout
        assert "/dev/nvidia" in nodes, f"the service (pid {pid}) has no /dev/nvidia* open"
    assert allocated_gpu_bytes(gpu) > 0, "the service reports no GPU memory allocated: the model is not on the GPU"


def test_image_question_is_answered_by_the_model_on_cuda(gpu):
    assert gpu.config.get("device") == "cuda", f"the service is configured for {gpu.config.get('device')!r}, not cuda"
    image = gpu.run_python(
        "import base64, io; from PIL import Image; b = io.BytesIO(); Image.new('RGB', (64, 48), (30, 200, 30)).save(b, 'PNG');"
        " print('data:image/png;base64,' + base64.b64encode(b.getvalue()).decode())"
    ).stdout.strip()
    status, models = gpu.request("GET", "/v1/models")
    assert status == 200, models
    body = {
        "model": json.loads(models)["data"][0]["id"],
        "max_tokens": 8,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
    }
    status, text = gpu.request("POST", "/v1/chat/completions", body)
    assert status == 200, f"{status}: {text[:500]}"
    answer = json.loads(text)
    assert answer["usage"]["completion_tokens"] >= 1 and isinstance(answer["choices"][0]["message"]["content"], str)
    assert allocated_gpu_bytes(gpu) > 0, "answered, but the service reports no GPU memory: not on CUDA"
