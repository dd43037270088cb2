"""`vlmkit ops TASK HOST ...`: operate a deployed server over SSH (Fabric).

HOST is a host of the Ansible inventory (--inventory, default $VLMKIT_INVENTORY or
inventory/example), or user@host[:port]. Tasks: tunnel, status, logs, restart, gpu-watch, ask,
usecases, smoke. Fabric and paramiko are imported only here (`pip install 'vlmkit[ops]'`).
"""

from __future__ import annotations

import argparse
import sys

TASKS = {
    "tunnel": "forward the service's port to this machine over SSH and print the local URL",
    "status": "GPUs, driver/CUDA, service state and readiness, model and revision, uptime, last errors",
    "logs": "the service's journal (--follow, --since)",
    "restart": "restart the service and wait until it is ready",
    "gpu-watch": "GPU memory, utilisation and temperature, refreshed like `nvidia-smi -l 2`",
    "ask": "send a local image and a question through a tunnel, stream the answer",
    "usecases": "run the use-case suite through a tunnel (vlmkit usecases against this host)",
    "smoke": "run the testinfra smoke suite (tests/smoke) against the host",
}


def configure(parser: argparse.ArgumentParser) -> None:
    from inference.ops.target import default_inventory

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("host", metavar="HOST", help="inventory host name, or user@host[:port]")
    common.add_argument(
        "--inventory",
        default=None,
        help=f"Ansible inventory the host is in (default $VLMKIT_INVENTORY or {default_inventory()})",
    )
    common.add_argument(
        "-i", "--identity", default=None, help="SSH private key (default: the inventory's, or your SSH setup)"
    )
    common.add_argument("--vault-password-file", default=None, help="for an inventory with vault-encrypted variables")
    common.add_argument("--ask-vault-pass", action="store_true", help="prompt for the inventory's vault password")
    common.add_argument(
        "--accept-host-key",
        action="store_true",
        help="trust the server's SSH host key if known_hosts does not have it yet, and record it "
        "there (without this, an unknown key is refused and its fingerprint shown)",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, help_text in TASKS.items():
        sub = tasks.add_parser(name, parents=[common], help=help_text, description=help_text)
        getattr(_tasks(), "configure_" + name.replace("-", "_"))(sub)


def _tasks():
    from inference.ops import tasks

    return tasks


def run(args: argparse.Namespace) -> int:
    from inference.ops.target import OpsError

    try:
        return int(getattr(_tasks(), "run_" + args.task.replace("-", "_"))(args) or 0)
    except OpsError as exc:
        print(f"vlmkit ops {args.task}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
