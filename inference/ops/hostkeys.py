"""What to do with a server whose SSH host key is not in known_hosts: refuse, unless the operator accepts it.

Fabric trusts any unknown host key (paramiko's AutoAddPolicy), so the first connection to a
server, or one from a fresh machine, could be talking to anyone. Here an unknown key is refused,
and the refusal shows its fingerprint as `ssh` does (SHA256:..., base64 without padding), for the
operator to compare with the one the provider's console shows. With --accept-host-key the key is
trusted and appended to ~/.ssh/known_hosts, so later connections check it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from paramiko import MissingHostKeyPolicy, PKey, SSHClient

from inference.ops.target import OpsError


def fingerprint(key: PKey) -> str:
    """The key's type and SHA256 fingerprint, as `ssh-keygen -l` prints them."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def known_hosts_file() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


class UnknownHostKeyPolicy(MissingHostKeyPolicy):
    def __init__(self, describe: str, accept: bool) -> None:
        self.describe = describe
        self.accept = accept

    def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
        if not self.accept:
            raise OpsError(
                f"{self.describe}: its SSH host key is not in {known_hosts_file()}: {fingerprint(key)}. "
                "Compare it with the server's (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on its console, "
                "or your provider's panel), then run again with --accept-host-key to trust it and record it"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        record(hostname, key)


def record(hostname: str, key: PKey) -> None:
    """Append `hostname key-type base64` to ~/.ssh/known_hosts (created private if it is not there)."""
    path = known_hosts_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
