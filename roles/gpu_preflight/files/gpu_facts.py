"""Print, as JSON, what the GPU stage needs to know about this host. Reads only; changes nothing.

Usage: gpu_facts.py --model-dir DIR [--pci-devices DIR] [--nvidia-smi CMD] [--cuda-home DIR] [--disk-path NAME=DIR ...]
                    [--systemd-dir DIR]

Run by the gpu_preflight role with the host's Python (standard library only, Python >= 3.8):
NVIDIA GPUs and driver (nvidia-smi, the loaded kernel module, PCI), NVSwitches, MIG, container
markers, systemd and PID 1, Secure Boot, memory, free disk (and which filesystem) at the model folder
and the other folders named, the driver's packages and branches, CUDA toolkits and cuDNN found on
the host. It reads /proc, /sys and the tools that exist; a missing one leaves its fact empty. Nothing time-dependent is printed except what the host reports.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

NVIDIA_VENDOR = "0x10de"
# PCI classes of GPUs: 0x0300 VGA, 0x0302 3D controller (data-centre GPUs: H100, A100, L4 ...).
GPU_CLASSES = ("0x0300", "0x0302")
# NVSwitches (HGX/SXM boards) are "bridge, other" devices of NVIDIA's.
NVSWITCH_CLASS = "0x0680"
QUERY_FIELDS = (
    "index",
    "name",
    "memory.total",
    "driver_version",
    "pci.bus_id",
    "uuid",
    "persistence_mode",
    "mig.mode.current",
)
GPU_KEYS = ("index", "name", "memory_mib", "driver_version", "pci_bus_id", "uuid", "persistence_mode", "mig_mode")
# What nvidia-smi says when the user-space libraries were upgraded under a loaded older module.
MISMATCH = "Driver/library version mismatch"
# Package names that carry a driver branch: nvidia-utils-580-server, libnvidia-compute-580, cuda-drivers-580 ...
BRANCH_PACKAGE = re.compile(
    r"^(?:nvidia-[a-z-]+?|libnvidia-[a-z0-9-]+?|cuda-drivers|linux-modules-nvidia)-(\d{3})(?:-server)?(?:-open)?(?:-.*)?$"
)
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def run(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    if shutil.which(args[0]) is None:
        return 127, "", f"{args[0]}: not found"
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, "", str(exc)
    return result.returncode, result.stdout, result.stderr


def read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def branch_of(version: str | None) -> int | None:
    match = re.match(r"(\d+)\.", version or "")
    return int(match.group(1)) if match else None


def nvidia_smi(command: str) -> dict:
    """What nvidia-smi reports: the GPUs, the driver, the CUDA version the driver supports."""
    path = shutil.which(command)
    facts: dict = {
        "path": path,
        "ok": False,
        "error": "",
        "mismatch": False,
        "gpus": [],
        "driver_version": None,
        "cuda_version": None,
    }
    if path is None:
        facts["error"] = "nvidia-smi not found (no NVIDIA driver userspace on this host)"
        return facts
    rc, out, err = run([command, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"])
    if rc != 0:
        facts["error"] = (err or out).strip() or f"nvidia-smi exited {rc}"
        facts["mismatch"] = MISMATCH in facts["error"]
        return facts
    for line in out.strip().splitlines():
        values = [part.strip() for part in line.split(",")]
        if len(values) != len(QUERY_FIELDS):
            continue
        gpu = dict(zip(GPU_KEYS, values))
        gpu["index"] = int(gpu["index"]) if gpu["index"].isdigit() else gpu["index"]
        try:
            gpu["memory_mib"] = int(float(gpu["memory_mib"]))
        except ValueError:
            gpu["memory_mib"] = None
        facts["gpus"].append(gpu)
    if facts["gpus"]:
        facts["driver_version"] = facts["gpus"][0]["driver_version"]
    rc, out, _ = run([command])
    match = re.search(r"CUDA Version:\s*([\d.]+)", out) if rc == 0 else None
    facts["cuda_version"] = match.group(1) if match else None
    facts["ok"] = bool(facts["gpus"])
    if not facts["ok"]:
        facts["error"] = "nvidia-smi answers but lists no GPU"
    return facts


def kernel_module() -> dict:
    text = read("/proc/driver/nvidia/version") or ""
    match = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", text)
    version = match.group(1) if match else (read("/sys/module/nvidia/version") or "").strip() or None
    return {
        "loaded": Path("/sys/module/nvidia").is_dir() or bool(text),
        "version": version,
        "nouveau_loaded": Path("/sys/module/nouveau").is_dir(),
    }


def pci_gpus(devices_dir: str) -> dict:
    """NVIDIA display/3D controllers and NVSwitches on the PCI bus (seen even without a driver)."""
    root = Path(devices_dir)
    found, switches = [], []
    if not root.is_dir():
        return {"readable": False, "source": devices_dir, "nvidia_gpus": [], "nvswitches": []}
    for device in sorted(root.iterdir()):
        vendor = (read(device / "vendor") or "").strip().lower()
        pci_class = (read(device / "class") or "").strip().lower()
        if vendor != NVIDIA_VENDOR:
            continue
        entry = {"address": device.name, "device_id": (read(device / "device") or "").strip(), "class": pci_class}
        if pci_class[:6] in GPU_CLASSES:
            found.append(entry)
        elif pci_class[:6] == NVSWITCH_CLASS:
            switches.append(entry)
    return {"readable": True, "source": devices_dir, "nvidia_gpus": found, "nvswitches": switches}


def container_markers() -> list[str]:
    """Signs that this system runs in a container (where no kernel driver can be installed)."""
    markers = []
    for path in ("/.dockerenv", "/run/.containerenv"):
        if Path(path).exists():
            markers.append(path)
    environ = read("/proc/1/environ") or ""
    match = re.search(r"(?:^|\x00)container=([^\x00]+)", environ)
    if match:
        markers.append(f"PID 1 environment container={match.group(1)}")
    container_file = (read("/run/systemd/container") or "").strip()
    if container_file:
        markers.append(f"/run/systemd/container says {container_file}")
    cgroup = read("/proc/1/cgroup") or ""
    for word in ("kubepods", "docker", "containerd", "lxc", "libpod"):
        if word in cgroup:
            markers.append(f"/proc/1/cgroup mentions {word}")
            break
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        markers.append("KUBERNETES_SERVICE_HOST is set")
    rc, out, _ = run(["systemd-detect-virt", "--container"])
    if rc == 0 and out.strip() and out.strip() != "none":
        markers.append(f"systemd-detect-virt --container: {out.strip()}")
    return markers


def secure_boot() -> str:
    if not Path("/sys/firmware/efi").is_dir():
        return "not-efi" if Path("/sys/firmware").is_dir() else "unknown"
    data = None
    try:
        data = Path("/sys/firmware/efi/efivars", SECURE_BOOT_VAR).read_bytes()
    except OSError:
        pass
    if data:
        return "enabled" if data[-1] == 1 else "disabled"
    rc, out, _ = run(["mokutil", "--sb-state"])
    if rc == 0 and "enabled" in out.lower():
        return "enabled"
    if rc == 0 and "disabled" in out.lower():
        return "disabled"
    return "unknown"


def memory() -> dict:
    fields = {}
    for line in (read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024
    return {"total_bytes": fields.get("MemTotal"), "available_bytes": fields.get("MemAvailable")}


def nearest_existing(path: Path) -> Path:
    checked = path
    while not checked.exists() and checked != checked.parent:
        checked = checked.parent
    return checked


def filesystem(directory: str) -> dict:
    """The filesystem a folder is (or will be) on: its device, free bytes, and the folder's real path."""
    path = Path(directory)
    checked = nearest_existing(path)
    stat = os.statvfs(checked)
    real = Path(os.path.realpath(checked)) / path.relative_to(checked)
    return {
        "path": str(path),
        "checked_path": str(checked),
        "real_path": str(real),
        "device": os.stat(checked).st_dev,
        "free_bytes": stat.f_bavail * stat.f_frsize,
    }


def disk(model_dir: str) -> dict:
    """Free space where the model goes (its nearest existing folder), and what is already there."""
    path = Path(model_dir)
    checked = nearest_existing(path)
    stat = os.statvfs(checked)
    present = 0
    if path.is_dir():
        for directory, _subdirs, files in os.walk(path):
            for name in files:
                try:
                    present += os.lstat(os.path.join(directory, name)).st_size
                except OSError:
                    pass
    return {
        "model_dir": str(path),
        "model_dir_real": filesystem(model_dir)["real_path"],
        "checked_path": str(checked),
        "device": os.stat(checked).st_dev,
        "free_bytes": stat.f_bavail * stat.f_frsize,
        "model_present_bytes": present,
        "model_complete": (path / ".cache" / "vlmkit" / "complete.json").is_file(),
    }


def driver_packages() -> dict:
    """Installed packages of the NVIDIA driver, and which package owns nvidia-smi."""
    rc, out, _ = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"])
    packages = []
    if rc == 0:
        pattern = re.compile(r"^(nvidia-|libnvidia-|cuda-drivers|linux-modules-nvidia-)")
        for line in out.splitlines():
            status, _, rest = line.partition("\t")
            name, _, version = rest.partition("\t")
            if status.startswith("ii") and pattern.match(name):
                branch = BRANCH_PACKAGE.match(name)
                packages.append({"name": name, "version": version, "branch": int(branch.group(1)) if branch else None})
    owner = None
    smi = shutil.which("nvidia-smi")
    if smi:
        rc, out, _ = run(["dpkg-query", "-S", os.path.realpath(smi)])
        if rc != 0 and os.path.realpath(smi) != smi:
            rc, out, _ = run(["dpkg-query", "-S", smi])
        owner = out.split(":")[0].strip() if rc == 0 and out else None
    branches = sorted({package["branch"] for package in packages if package["branch"] is not None})
    return {
        "installed": packages,
        "nvidia_smi_owner": owner,
        "branches": branches,
        "highest_branch": branches[-1] if branches else None,
    }


def cuda_toolkits(cuda_home: str) -> list[dict]:
    """Every CUDA toolkit with an nvcc on this host, and what release it says it is."""
    candidates = sorted(set(glob.glob("/usr/local/cuda*/bin/nvcc") + [cuda_home + "/bin/nvcc"]))
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(on_path)
    toolkits, seen = [], set()
    for nvcc in candidates:
        if not os.path.isfile(nvcc) or os.path.realpath(nvcc) in seen:
            continue
        seen.add(os.path.realpath(nvcc))
        rc, out, _ = run([nvcc, "--version"])
        match = re.search(r"release (\d+\.\d+), V([\d.]+)", out)
        toolkits.append({
            "nvcc": nvcc,
            "home": str(Path(os.path.realpath(nvcc)).parent.parent),
            "release": match.group(1) if match else None,
            "version": match.group(2) if match else None,
        })  # fmt: skip
    return toolkits


def cudnn_headers() -> list[dict]:
    found = []
    patterns = (
        "/usr/include/*-linux-gnu/cudnn_version_v*.h",
        "/usr/include/cudnn_version.h",
        "/usr/local/cuda*/include/cudnn_version.h",
        "/usr/local/cudnn*/include/cudnn_version.h",
    )
    seen = set()
    for pattern in patterns:
        for header in sorted(glob.glob(pattern)):
            real = os.path.realpath(header)
            if real in seen:
                continue
            seen.add(real)
            parts = dict(re.findall(r"#define CUDNN_(MAJOR|MINOR|PATCHLEVEL)\s+(\d+)", read(header) or ""))
            if len(parts) == 3:
                found.append({"header": header, "version": "{MAJOR}.{MINOR}.{PATCHLEVEL}".format(**parts)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--pci-devices", default="/sys/bus/pci/devices")
    parser.add_argument("--nvidia-smi", default="nvidia-smi")
    parser.add_argument("--cuda-home", default="/usr/local/cuda")
    parser.add_argument("--systemd-dir", default="/run/systemd/system", help="exists when systemd is the running init")
    parser.add_argument(
        "--disk-path",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a folder whose filesystem and free space to report (repeatable)",
    )
    args = parser.parse_args()

    smi = nvidia_smi(args.nvidia_smi)
    module = kernel_module()
    driver_version = smi["driver_version"] or module["version"]
    print(json.dumps({
        "nvidia_smi": smi,
        "kernel_module": module,
        "driver_version": driver_version,
        "driver_branch": branch_of(driver_version),
        "pci": pci_gpus(args.pci_devices),
        "container_markers": container_markers(),
        "systemd": Path(args.systemd_dir).is_dir(),
        "pid1": (read("/proc/1/comm") or "").strip(),
        "secure_boot": secure_boot(),
        "memory": memory(),
        "disk": disk(args.model_dir),
        "filesystems": {name: filesystem(directory) for name, _, directory in (item.partition("=") for item in args.disk_path)},
        "driver_packages": driver_packages(),
        "kernel_headers": Path("/lib/modules", os.uname().release, "build").exists(),
        "cuda_toolkits": cuda_toolkits(args.cuda_home),
        "cudnn_headers": cudnn_headers(),
    }, indent=1, sort_keys=True))  # fmt: skip


if __name__ == "__main__":
    main()
