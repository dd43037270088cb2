"""Runs ON THE SERVER (as root, the system python3, stdlib only): what `vlmkit ops status` shows, as JSON.

    python3 probe.py UNIT BIND PORT MODEL_PATH MANIFEST    (everything)
    python3 probe.py ready BIND PORT                        (readiness only)

One SSH round trip gathers it all: GPUs (nvidia-smi), the unit (systemctl), readiness
(/health/ready, no key needed), the model folder's completion marker, the deploy manifest and the
last error lines of the unit's journal. Nothing here reads the API key. Keep it compatible with
Python 3.8 (older servers' python3) and free of imports outside the standard library.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

NO_GPU = "no NVIDIA GPU/driver on this host"
GPU_FIELDS = ("index", "name", "memory_used_mib", "memory_total_mib", "utilization_percent", "temperature_c", "driver")
GPU_QUERY = "index,name,memory.used,memory.total,utilization.gpu,temperature.gpu,driver_version"
APP_QUERY = "gpu_uuid,pid,process_name,used_memory"
ERROR_LINE = re.compile(
    r"\b(ERROR|CRITICAL|Traceback|Exception)\b|Failed with result|Main process exited, code=(killed|exited, status=[1-9])"
    r"|Start request repeated too quickly|\bOOM\b|out of memory",
    re.IGNORECASE,
)
UNIT_PROPERTIES = (
    "ActiveState",
    "SubState",
    "MainPID",
    "NRestarts",
    "ActiveEnterTimestampMonotonic",
    "UnitFileState",
    "Result",
    "ExecMainStatus",
)


def sh(args, timeout=30):
    """(returncode, stdout, stderr); returncode None when the program is missing or hangs."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def _number(text):
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None  # "[N/A]", "[Not Supported]"


def parse_gpus(csv_text):
    """nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits -> one dict per GPU."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != len(GPU_FIELDS):
            continue
        gpu = dict(zip(GPU_FIELDS, parts))
        for key in ("index", "memory_used_mib", "memory_total_mib", "utilization_percent", "temperature_c"):
            gpu[key] = _number(gpu[key])
        gpus.append(gpu)
    return gpus


def parse_apps(csv_text):
    """nvidia-smi --query-compute-apps=APP_QUERY --format=csv,noheader,nounits -> processes on the GPUs."""
    apps = []
    for line in csv_text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 4:
            apps.append(
                {
                    "gpu_uuid": parts[0],
                    "pid": _number(parts[1]),
                    "process": parts[2],
                    "memory_used_mib": _number(parts[3]),
                }
            )
    return apps


def parse_cuda_version(smi_text):
    match = re.search(r"CUDA Version:\s*([\d.]+)", smi_text)
    return match.group(1) if match else None


def gpu_facts():
    if shutil.which("nvidia-smi") is None:
        return {"available": False, "note": NO_GPU, "gpus": []}
    code, out, err = sh(["nvidia-smi", "--query-gpu=" + GPU_QUERY, "--format=csv,noheader,nounits"])
    if code != 0:
        reason = (out + err).strip().splitlines()
        return {"available": False, "note": NO_GPU + (": " + reason[0] if reason else ""), "gpus": []}
    gpus = parse_gpus(out)
    _, header, _ = sh(["nvidia-smi"])
    _, apps, _ = sh(["nvidia-smi", "--query-compute-apps=" + APP_QUERY, "--format=csv,noheader,nounits"])
    return {
        "available": bool(gpus),
        "note": None if gpus else NO_GPU,
        "gpus": gpus,
        "driver": gpus[0]["driver"] if gpus else None,
        "cuda": parse_cuda_version(header),
        "processes": parse_apps(apps),
    }


def unit_facts(unit):
    args = ["systemctl", "show", unit] + ["-p" + name for name in UNIT_PROPERTIES]
    code, out, err = sh(args)
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    active = props.get("ActiveState", "unknown")
    entered = _number(props.get("ActiveEnterTimestampMonotonic", "0") or "0") or 0
    uptime = None
    if active == "active" and entered:
        uptime = max(0.0, time.monotonic() - entered / 1e6)
    return {
        "unit": unit + ".service",
        "active_state": active,
        "sub_state": props.get("SubState"),
        "main_pid": _number(props.get("MainPID", "0") or "0"),
        "restarts": _number(props.get("NRestarts", "0") or "0"),
        "enabled": props.get("UnitFileState"),
        "result": props.get("Result"),
        "uptime_s": uptime,
        "error": err.strip() or None if code else None,
    }


def ready_facts(bind, port):
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else "::1" if bind == "::" else bind
    url = "http://{}:{}/health/ready".format(f"[{host}]" if ":" in host else host, port)
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError as exc:
        return {"url": url, "ready": False, "http_status": None, "error": str(exc)}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"body": body[:200]}
    facts = {"url": url, "ready": status == 200, "http_status": status}
    facts.update({key: parsed.get(key) for key in ("status", "model", "version", "error") if key in parsed})
    return facts


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def model_facts(model_path, manifest):
    marker = _read_json(os.path.join(model_path, ".cache", "vlmkit", "complete.json"))
    recorded = (manifest or {}).get("model") or {}
    source = marker or recorded
    return {
        "path": model_path,
        "complete": marker is not None,
        "repo": source.get("repo"),
        "revision": source.get("revision"),
        "sha": source.get("sha"),
        "files": len(marker["files"]) if marker and isinstance(marker.get("files"), list) else source.get("files"),
        "bytes": source.get("bytes"),
    }


def error_lines(journal_text, keep=5):
    """The last `keep` lines of a journal that look like errors or failures."""
    return [line for line in journal_text.splitlines() if ERROR_LINE.search(line)][-keep:]


def main(argv):
    if argv[:1] == ["ready"]:  # readiness only (restart's poll)
        print(json.dumps(ready_facts(argv[1], argv[2])))
        return 0
    unit, bind, port, model_path, manifest_path = argv[:5]
    manifest = _read_json(manifest_path)
    _, journal, _ = sh(["journalctl", "-u", unit + ".service", "-o", "short-iso", "--no-pager", "-n", "5000"])
    pretty = None
    try:
        with open("/etc/os-release") as handle:
            pretty = (
                dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
                .get("PRETTY_NAME", "")
                .strip('"')
            )
    except OSError:
        pass
    with open("/proc/uptime") as handle:
        host_uptime = float(handle.read().split()[0])
    facts = {
        "host": {
            "hostname": socket.gethostname(),
            "os": pretty,
            "uptime_s": host_uptime,
            "load": list(os.getloadavg()),
        },
        "gpu": gpu_facts(),
        "service": unit_facts(unit),
        "ready": ready_facts(bind, port),
        "model": model_facts(model_path, manifest),
        "deploy": {
            "vlmkit": ((manifest or {}).get("vlmkit") or {}).get("version"),
            "profile": (manifest or {}).get("profile"),
            "deployed_from": (manifest or {}).get("deployed_from"),
            "cuda_toolkit": ((manifest or {}).get("nvidia") or {}).get("cuda_toolkit"),
            "torch": ((manifest or {}).get("torch") or {}).get("version"),
        },
        "errors": error_lines(journal),
    }
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
