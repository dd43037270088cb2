"""Read and change the state of one backend's servers through HAProxy's admin socket.

Runs on the balancer with its own python3 (ansible.builtin.script); talks to the socket directly,
so it needs no socat. Prints one JSON object: {"changed": BOOL, "servers": [...], ...}; on a
failure it prints the reason on stderr and exits 1.

  haproxy_admin.py --socket S --backend B show
  haproxy_admin.py --socket S --backend B drain NAME [--timeout SEC] [--keep-one-serving]
      stop sending NAME new requests (state drain), wait until its requests have finished, then put
      it in maintenance (state maint: no traffic at all, whatever its health checks say).
  haproxy_admin.py --socket S --backend B ready NAME [--timeout SEC]
      leave maintenance (state ready) and wait until HAProxy reports NAME UP.
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import sys
import time

POLL_S = 0.25


class AdminError(RuntimeError):
    pass


def command(path: str, line: str) -> str:
    """One command on the admin socket (non-interactive: HAProxy answers and closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        try:
            client.connect(path)
        except OSError as exc:
            raise AdminError(f"cannot reach HAProxy's admin socket {path}: {exc}") from exc
        client.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers(path: str, backend: str) -> list[dict]:
    """The backend's servers as `show stat` reports them (status, sessions, check result, counters)."""
    text = command(path, "show stat").lstrip("# ")
    rows = []
    for row in csv.DictReader(text.splitlines()):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        rows.append(
            {
                "name": row["svname"],
                "address": row.get("addr", ""),
                "status": row["status"],
                "current_sessions": int(row["scur"] or 0),
                "queued": int(row["qcur"] or 0),
                "total_sessions": int(row["stot"] or 0),
                "responses_2xx": int(row.get("hrsp_2xx") or 0),
                "responses_5xx": int(row.get("hrsp_5xx") or 0),
                "connection_errors": int(row.get("econ") or 0),
                "response_errors": int(row.get("eresp") or 0),
                "redispatched": int(row.get("wredis") or 0),
                "check_status": row.get("check_status", ""),
                "check_code": row.get("check_code", ""),
                "check_description": row.get("last_chk", ""),
                "seconds_in_status": int(row.get("lastchg") or 0),
                "went_down": int(row.get("chkdown") or 0),
            }
        )
    if not rows:
        raise AdminError(f"HAProxy has no backend {backend!r} with servers (is this the vlmkit balancer?)")
    return rows


def find(path: str, backend: str, name: str) -> dict:
    for server in servers(path, backend):
        if server["name"] == name:
            return server
    known = ", ".join(s["name"] for s in servers(path, backend))
    raise AdminError(f"backend {backend!r} has no server {name!r} (it has: {known})")


def serving(server: dict) -> bool:
    """Whether HAProxy sends it new requests now (UP, or UP but failing its first checks)."""
    return server["status"].startswith("UP") or server["status"] == "no check"


def set_state(path: str, backend: str, name: str, state: str) -> None:
    answer = command(path, f"set server {backend}/{name} state {state}").strip()
    if answer:  # HAProxy answers nothing on success
        raise AdminError(f"set server {backend}/{name} state {state}: {answer}")


def describe_check(server: dict) -> str:
    text = server["check_status"] or "no check result"
    if server["check_code"]:
        text += f" (HTTP {server['check_code']})"
    if server["check_description"]:
        text += f": {server['check_description']}"
    return text


def drain(path: str, backend: str, name: str, timeout: float, keep_one_serving: bool) -> dict:
    before = find(path, backend, name)
    if before["status"].startswith("MAINT") and before["current_sessions"] == 0:
        return {"changed": False, "before": before, "after": before, "waited_s": 0.0}
    if keep_one_serving and serving(before):
        others = [s["name"] for s in servers(path, backend) if s["name"] != name and serving(s)]
        if not others:
            raise AdminError(
                f"{name} is the only server of {backend!r} the balancer sends requests to: taking it out would "
                "leave the endpoint with none. Bring another server back first (or upgrade this one with "
                "load_balancer_keep_one_serving: false, accepting the outage)."
            )
    started = time.monotonic()
    set_state(path, backend, name, "drain")
    while True:
        current = find(path, backend, name)
        if current["current_sessions"] == 0 and current["queued"] == 0:
            break
        if time.monotonic() - started > timeout:
            if serving(before):
                set_state(path, backend, name, "ready")
            raise AdminError(
                f"{name} still had {current['current_sessions']} request(s) in flight after {timeout:.0f} s of "
                "draining; it was put back as it was. Raise load_balancer_drain_timeout for longer generations."
            )
        time.sleep(POLL_S)
    set_state(path, backend, name, "maint")
    return {
        "changed": True,
        "before": before,
        "after": find(path, backend, name),
        "waited_s": round(time.monotonic() - started, 2),
    }


def ready(path: str, backend: str, name: str, timeout: float) -> dict:
    before = find(path, backend, name)
    if before["status"] == "UP":
        return {"changed": False, "before": before, "after": before, "waited_s": 0.0}
    started = time.monotonic()
    set_state(path, backend, name, "ready")
    while True:
        current = find(path, backend, name)
        if current["status"] == "UP":
            break
        if time.monotonic() - started > timeout:
            raise AdminError(
                f"{name} is {current['status']} in the balancer {timeout:.0f} s after leaving maintenance; "
                f"its health check says {describe_check(current)}"
            )
        time.sleep(POLL_S)
    return {"changed": True, "before": before, "after": current, "waited_s": round(time.monotonic() - started, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--keep-one-serving", action="store_true")
    parser.add_argument("action", choices=["show", "drain", "ready"])
    parser.add_argument("server", nargs="?")
    args = parser.parse_args()
    try:
        if args.action == "show":
            result = {"changed": False}
        elif not args.server:
            raise AdminError(f"{args.action} needs a server name")
        elif args.action == "drain":
            result = drain(args.socket, args.backend, args.server, args.timeout, args.keep_one_serving)
        else:
            result = ready(args.socket, args.backend, args.server, args.timeout)
        result["servers"] = servers(args.socket, args.backend)
    except AdminError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
