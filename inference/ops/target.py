"""Which server a task talks to: an Ansible inventory host by name, or a plain user@host[:port].

Inventory hosts are read with `ansible-inventory --host NAME` (no coupling to Ansible's Python
internals): ansible_host, ansible_user, ansible_port, ansible_ssh_private_key_file, ansible_become
and the inference_service_* variables the deploy used. The host's own /etc/vlmkit/config.yaml has
the last word on the port and bind address (remote.py reads it); the inventory's values are what
is expected when that file cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_INVENTORY = "inventory/example"
_PLAIN = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+)(?::(?P<port>\d{1,5}))?$")
_SIMPLE_TEMPLATE = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")


class OpsError(RuntimeError):
    """A task cannot go on; the message says why and what to do."""


@dataclass
class Target:
    name: str  # as the operator wrote it
    address: str  # what SSH connects to
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    check_host_keys: bool = True  # False where the inventory turns checking off (StrictHostKeyChecking=no)
    accept_host_key: bool = False  # trust and record a host key not yet in known_hosts
    become: bool = False  # privileged commands go through `sudo -n` (implied for a user other than root)
    unit: str = "vlmkit"
    config_dir: str = "/etc/vlmkit"
    service_host: str = "127.0.0.1"  # the bind address, as configured
    service_port: int = 8000
    inventory: str | None = None  # the inventory it came from, None for a plain user@host

    @property
    def needs_sudo(self) -> bool:
        return self.become or (self.user not in (None, "root"))

    @property
    def env_file(self) -> str:
        return f"{self.config_dir}/{self.unit}.env"

    def describe(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.name} ({who}{self.address}{port})" if self.name != self.address else f"{who}{self.address}{port}"


def default_inventory() -> str:
    return os.environ.get("VLMKIT_INVENTORY", DEFAULT_INVENTORY)


def resolve(
    spec: str, inventory: str | None = None, identity: str | None = None, vault_args: tuple[str, ...] = ()
) -> Target:
    """The target for HOST as given on the command line."""
    inventory = inventory or default_inventory()
    looks_plain = "@" in spec or ":" in spec
    if not looks_plain:
        hostvars = _inventory_host(spec, inventory, vault_args)
        if hostvars is not None:
            target = from_hostvars(spec, hostvars, inventory)
            if identity:
                target.key_file = identity
            return target
    match = _PLAIN.match(spec)
    if not match:
        raise OpsError(f"{spec!r} is neither a host of {inventory} nor user@host[:port]")
    return Target(
        name=spec,
        address=match["host"].strip("[]"),
        user=match["user"],
        port=int(match["port"]) if match["port"] else None,
        key_file=identity,
    )


def from_hostvars(name: str, hostvars: dict, inventory: str | None = None) -> Target:
    def value(key: str, default=None):
        raw = hostvars.get(key, default)
        if isinstance(raw, str):
            template = _SIMPLE_TEMPLATE.match(raw.strip())
            if template:  # "{{ ansible_host }}" and the like: resolve one level, from the same host
                raw = hostvars.get(template.group(1), default)
            elif "{{" in raw or "{%" in raw:
                return default  # a real template: leave it to the host's config.yaml
        return raw

    ssh_args = " ".join(str(hostvars.get(key, "")) for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    no_check = bool(re.search(r"StrictHostKeyChecking=no|UserKnownHostsFile=/dev/null", ssh_args))
    key_file = value("ansible_ssh_private_key_file") or value("ansible_private_key_file")
    port = value("ansible_port") or value("ansible_ssh_port")
    bind = value("inference_service_host", "127.0.0.1")
    return Target(
        name=name,
        address=str(value("ansible_host") or name),
        user=value("ansible_user") or value("ansible_ssh_user"),
        port=port_number(port, f"{name} in {inventory}: ansible_port") if port else None,
        key_file=str(Path(key_file).expanduser()) if key_file else None,
        check_host_keys=not no_check,
        become=_truthy(value("ansible_become", False)),
        unit=str(value("inference_service_name", "vlmkit")),
        config_dir=str(value("inference_service_config_dir", "/etc/vlmkit")),
        service_host=str(bind or "127.0.0.1"),
        service_port=port_number(
            value("inference_service_port", 8000) or 8000, f"{name} in {inventory}: inference_service_port"
        ),
        inventory=inventory,
    )


def port_number(value, field: str) -> int:
    """`value` as a TCP port; `field` names where it came from in the message."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise OpsError(f"{field} must be a port number from 1 to 65535, got {value!r}")
    return int(text)


def _truthy(raw) -> bool:
    if isinstance(raw, str):
        return raw.strip().lower() in ("1", "yes", "true", "on")
    return bool(raw)


def _ansible_inventory() -> str | None:
    return shutil.which("ansible-inventory") or (
        str(Path(sys.executable).with_name("ansible-inventory"))
        if Path(sys.executable).with_name("ansible-inventory").exists()
        else None
    )


def _inventory_host(name: str, inventory: str, vault_args: tuple[str, ...]) -> dict | None:
    """The host's variables (group_vars merged), or None when the inventory does not have it."""
    if not Path(inventory).exists():
        if inventory != DEFAULT_INVENTORY or os.environ.get("VLMKIT_INVENTORY"):
            raise OpsError(f"no inventory at {inventory}")
        return None
    tool = _ansible_inventory()
    if tool is None:
        raise OpsError(
            f"reading the inventory {inventory} needs ansible-inventory (pip install ansible-core); "
            "or give the host as user@host[:port]"
        )
    result = subprocess.run(
        [tool, "-i", inventory, "--host", name, *vault_args], capture_output=True, text=True, timeout=120
    )
    if result.returncode == 0:
        return json.loads(result.stdout)
    if "vault" in result.stderr.lower():
        raise OpsError(
            f"{inventory} holds vault-encrypted variables: pass --vault-password-file FILE or "
            "--ask-vault-pass, or set ANSIBLE_VAULT_PASSWORD_FILE"
        )
    if "could not match" in result.stderr.lower() or "not found" in result.stderr.lower():
        return None
    raise OpsError(f"ansible-inventory could not read {inventory}: {result.stderr.strip()[-500:]}")
