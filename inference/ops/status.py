"""The status screen and the GPU table, from the facts probe.py gathered on the server."""

from __future__ import annotations

from inference.ops.probe import NO_GPU


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _value(number, unit: str = "") -> str:
    return "n/a" if number is None else f"{number}{unit}"


def gpu_lines(gpu: dict) -> list[str]:
    """One line per GPU (name, memory used/total, utilisation, temperature), then its processes."""
    if not gpu.get("available"):
        return [gpu.get("note") or NO_GPU]
    lines = []
    for card in gpu["gpus"]:
        used, total = card.get("memory_used_mib"), card.get("memory_total_mib")
        share = f" ({100 * used / total:.0f}%)" if isinstance(used, (int, float)) and total else ""
        lines.append(
            f"GPU {card['index']}  {card['name']:<24} {_value(used)} / {_value(total)} MiB{share}   "
            f"util {_value(card.get('utilization_percent'), '%')}   temp {_value(card.get('temperature_c'), ' °C')}"
        )
    for app in gpu.get("processes") or []:
        lines.append(f"       pid {app['pid']} {app['process']}: {_value(app['memory_used_mib'])} MiB")
    return lines


def render(name: str, facts: dict) -> str:
    host, gpu, service, ready, model, deploy = (
        facts[key] for key in ("host", "gpu", "service", "ready", "model", "deploy")
    )
    label = 8
    lines = [
        f"{name}: {host['hostname']}, {host.get('os') or 'unknown OS'}, up {duration(host['uptime_s'])}, "
        f"load {' '.join(f'{x:.2f}' for x in host.get('load') or [])}"
    ]

    def row(title: str, text: str) -> None:
        lines.append(f"{title:<{label}}{text}")

    gpus = gpu_lines(gpu)
    row("GPU", gpus[0])
    for extra in gpus[1:]:
        row("", extra)
    if gpu.get("available"):
        toolkit = f", toolkit {deploy['cuda_toolkit']}" if deploy.get("cuda_toolkit") else ""
        row("Driver", f"{gpu.get('driver') or 'n/a'}, CUDA {gpu.get('cuda') or 'n/a'}{toolkit}")
    elif deploy.get("cuda_toolkit"):
        row("CUDA", f"toolkit {deploy['cuda_toolkit']}")
    state = f"{service['active_state']} ({service['sub_state']})"
    details = [
        f"pid {service['main_pid']}" if service.get("main_pid") else None,
        f"up {duration(service['uptime_s'])}" if service.get("uptime_s") is not None else None,
        f"restarts {service.get('restarts')}",
        service.get("enabled"),
    ]
    row("Service", f"{service['unit']} {state}, " + ", ".join(d for d in details if d))
    if ready.get("ready"):
        row(
            "Ready",
            f"yes: {ready.get('model')} (vlmkit {ready.get('version')}) at {ready['url'].rsplit('/health', 1)[0]}",
        )
    else:
        why = ready.get("status") or ready.get("error") or f"HTTP {ready.get('http_status')}"
        row("Ready", f"NO: {why}")
    revision = model.get("revision") or "?"
    sha = f" (commit {model['sha'][:12]})" if model.get("sha") else ""
    completeness = "" if model.get("complete") else ", NOT complete"
    row("Model", f"{model.get('repo') or '?'} @ {revision}{sha} in {model['path']}{completeness}")
    stack = [
        f"vlmkit {deploy['vlmkit']}" if deploy.get("vlmkit") else None,
        f"profile {deploy['profile']}" if deploy.get("profile") else None,
        f"torch {deploy['torch']}" if deploy.get("torch") else None,
        f"from {deploy['deployed_from'][:12]}" if deploy.get("deployed_from") else None,
    ]
    row("Deploy", ", ".join(part for part in stack if part) or "no manifest")
    errors = facts.get("errors") or []
    if not errors:
        row("Errors", "none in the unit's journal")
    else:
        row("Errors", f"last {len(errors)}:")
        for line in errors:
            row("", line[:200])
    return "\n".join(lines)
