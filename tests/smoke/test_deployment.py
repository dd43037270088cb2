"""After a deploy: the stack is the pinned one, the model is complete, the service is up, hardened
and answering, refuses strangers, and comes back when killed. GPU checks run where a GPU is."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.lab.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ALLOWED_EXTRAS = {"pip", "setuptools", "wheel", "vlmkit"}
TINY_PNG_SNIPPET = r"""
import base64, io, json, sys
from PIL import Image
image = Image.new("RGB", (64, 48), (200, 30, 30))
buffer = io.BytesIO(); image.save(buffer, format="PNG")
print("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
"""


def test_environment_holds_exactly_the_pinned_set(deployment):
    """The environment's own packages are the lock's; packages reused from a base environment
    (python_env_reuse_from) are there, at the versions the manifest recorded."""
    lock = read_lock(REPO_ROOT / "requirements" / f"{deployment.profile}.txt")
    reused = (deployment.manifest["environment"].get("reused") or {}).get("packages", {})
    # Each distribution as imports find it (the first on sys.path), and whether it is the venv's own.
    result = deployment.run_python(
        "import importlib.metadata as m, json, sys, pathlib; prefix = pathlib.Path(sys.prefix).resolve(); seen = {}\n"
        "for d in m.distributions():\n"
        "    seen.setdefault(d.metadata['Name'].lower(), [d.metadata['Name'], d.version,"
        " prefix in pathlib.Path(str(d.locate_file(''))).resolve().parents])\n"
        "print(json.dumps(list(seen.values())))"
    )
    assert result.rc == 0, result.stderr
    found = {canonical(name): (version, own) for name, version, own in json.loads(result.stdout)}
    installed = {name: version for name, (version, own) in found.items()}
    problems = [
        f"{name}: lock {version}, host {installed.get(name, 'missing')}"
        for name, version in sorted(lock.items())
        if name not in reused and installed.get(name) != version
    ]
    own_names = {name for name, (_, own) in found.items() if own} if reused else set(installed)
    problems += [
        f"{name}=={installed[name]} is not in the lock" for name in sorted(own_names - set(lock) - ALLOWED_EXTRAS)
    ]
    if reused:
        problems += (
            [] if reused.get("torch", {}).get("installed") else ["torch (reused) is missing from the base environment"]
        )
    assert not problems, (
        f"{deployment.host.backend.hostname} drifted from requirements/{deployment.profile}.txt:\n"
        + "\n".join(problems)
    )


def test_vlmkit_on_the_host_is_this_checkouts_version(deployment):
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert deployment.manifest["vlmkit"]["version"] == version
    result = deployment.host.run(f"{deployment.env_path}/bin/vlmkit --version")
    assert result.rc == 0 and version in result.stdout


def test_manifest_records_the_stack(deployment):
    manifest = deployment.manifest
    for key in ("os", "kernel", "python", "environment", "vlmkit", "model", "torch", "nvidia", "deployed_from"):
        assert key in manifest, f"the manifest lacks {key}"
    if manifest["model"].get("source") == "on_disk":  # hf_model_download: false
        assert manifest["model"]["files"] >= 2 and manifest["model"]["bytes"] > 0, manifest["model"]
    else:
        assert manifest["model"]["complete"] and re.fullmatch(r"[0-9a-f]{40}", manifest["model"]["sha"])


def test_model_folder_is_complete_and_verified(deployment):
    model_dir = deployment.config["model_path"]
    if deployment.manifest["model"].get("source") == "on_disk":
        # hf_model_download: false: a checkpoint put there by hand has no download record to check.
        with deployment.host.sudo():
            names = deployment.host.check_output(f"ls {model_dir}").split()
        assert "config.json" in names and any(name.endswith(".safetensors") for name in names), names
        return
    with deployment.host.sudo():
        marker_file = deployment.host.file(f"{model_dir}/.cache/vlmkit/complete.json")
        assert marker_file.exists, f"{model_dir} has no completion marker: the download did not finish"
        marker = json.loads(marker_file.content_string)
        assert marker["repo"] == deployment.manifest["model"]["repo"]
        names = {entry["path"] for entry in marker["files"]}
        assert "config.json" in names and any(name.endswith(".safetensors") for name in names)
        for entry in marker["files"]:
            on_disk = deployment.host.file(f"{model_dir}/{entry['path']}")
            assert on_disk.exists, f"{entry['path']} is missing"
            if "size" in entry:
                assert on_disk.size == entry["size"], f"{entry['path']} has changed size since it was verified"


def test_service_unit_is_enabled_and_active(deployment):
    service = deployment.host.service(deployment.unit)
    assert service.is_enabled
    assert service.is_running


def test_secrets_file_is_readable_by_root_only(deployment):
    with deployment.host.sudo():
        env_file = deployment.host.file(deployment.env_file)
        assert env_file.exists and env_file.user == "root" and env_file.mode == 0o600


def test_port_listens_where_configured_and_nowhere_else(deployment):
    port = int(deployment.config.get("port", 8000))
    address = deployment.config.get("host", "127.0.0.1")
    with deployment.host.sudo():
        main_pid = int(deployment.host.run(f"systemctl show -P MainPID {deployment.unit}").stdout.strip())
    # Listening TCP sockets with their processes, read by the environment's psutil (in the lock): hosts
    # without iproute2's ss (minimal cloud images) are checked the same way.
    result = deployment.run_python(
        "import json, psutil; print(json.dumps([[c.laddr.ip, c.laddr.port, c.pid] for c in"
        " psutil.net_connections(kind='tcp') if c.status == psutil.CONN_LISTEN]))"
    )
    assert result.rc == 0, result.stderr
    listening = json.loads(result.stdout)
    render = lambda ip, port_: f"[{ip}]:{port_}" if ":" in ip else f"{ip}:{port_}"  # noqa: E731
    on_port = [render(ip, found) for ip, found, _ in listening if found == port]
    expected = render(address, port)
    assert on_port == [expected], f"port {port} listens on {on_port}, configured: {expected}"
    by_service = [render(ip, found) for ip, found, pid in listening if pid == main_pid]
    assert by_service == [expected], f"the service listens on {by_service}, configured: {expected} only"


def test_ready_endpoint_answers_200(deployment):
    status, body = deployment.request("GET", "/health/ready", auth="none")
    assert status == 200, body


def test_chat_completion_with_an_image_returns_text(deployment):
    image = deployment.run_python(TINY_PNG_SNIPPET)
    assert image.rc == 0, image.stderr
    status, models_body = deployment.request("GET", "/v1/models")
    assert status == 200, models_body
    model = json.loads(models_body)["data"][0]["id"]
    status, body = deployment.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": model,
            "max_tokens": 8,
            "min_tokens": 8,  # greedy and exactly 8 tokens: a sampled answer may end at once
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image.stdout.strip()}},
                        {"type": "text", "text": "What colour is this image?"},
                    ],
                }
            ],
        },
    )
    assert status == 200, body
    answer = json.loads(body)
    content = answer["choices"][0]["message"]["content"]
    assert isinstance(content, str), f"no text in {answer}"
    assert answer["usage"]["completion_tokens"] == 8 and answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("auth", ["none", "wrong"])
def test_request_without_the_right_key_is_refused(deployment, auth):
    status, body = deployment.request("POST", "/v1/chat/completions", {"model": "x", "messages": []}, auth=auth)
    assert status == 401, body


def test_unit_is_hardened(deployment):
    with deployment.host.sudo():
        result = deployment.host.run(f"systemd-analyze security --no-pager {deployment.unit}.service")
    assert result.rc == 0, result.stderr
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    properties = deployment.host.run(
        f"systemctl show -p NoNewPrivileges -p ProtectSystem -p ProtectHome -p PrivateTmp -p User {deployment.unit}"
    ).stdout
    assert "NoNewPrivileges=yes" in properties and "ProtectSystem=strict" in properties
    assert "ProtectHome=yes" in properties and "PrivateTmp=yes" in properties and "User=root" not in properties
    assert score <= 2.0, f"exposure {score} (systemd-analyze security) is above 2.0:\n{result.stdout[-2500:]}"


def gpu_present(deployment) -> bool:
    return deployment.host.run("command -v nvidia-smi && nvidia-smi -L").rc == 0


def test_gpu_driver_cuda_cudnn_and_torch_see_the_gpu(deployment):
    if not gpu_present(deployment):
        pytest.skip(f"no NVIDIA GPU on this host (profile {deployment.profile}); GPU checks run where one is")
    nvidia = deployment.manifest["nvidia"]
    assert nvidia["driver"], "nvidia-smi answers but the manifest records no driver"
    result = deployment.run_python(
        "import json, torch; print(json.dumps({'cuda': torch.cuda.is_available(), 'version': torch.version.cuda, "
        "'cudnn': torch.backends.cudnn.version(), 'devices': torch.cuda.device_count()}))"
    )
    assert result.rc == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["cuda"] and seen["devices"] >= 1, f"torch does not see the GPU: {seen}"
    assert seen["version"] and seen["cudnn"], f"torch lacks CUDA or cuDNN: {seen}"


def test_service_comes_back_after_being_killed(deployment):
    # Last on purpose: it takes the service down for a moment.
    host = deployment.host
    with host.sudo():
        old_pid = host.run(f"systemctl show -P MainPID {deployment.unit}").stdout.strip()
        assert old_pid not in ("", "0")
        host.run_expect([0], f"kill -KILL {old_pid}")
        wait_until(
            lambda: host.run(f"systemctl show -P MainPID {deployment.unit}").stdout.strip() not in ("", "0", old_pid),
            60,
            "systemd to start the service again after SIGKILL",
            interval=1,
        )
    deployment.wait_ready(timeout=300)


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
