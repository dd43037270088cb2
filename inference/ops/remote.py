"""One SSH connection to a deployed server (Fabric's Connection), and what the tasks ask of it.

Privileged commands (reading /etc/vlmkit, the journal, systemctl) run as root: directly when the
login is root, else through `sudo -n` (no password prompt: set up passwordless sudo, as Ansible's
become needs anyway). Outputs are captured, never echoed, so the API key read from the env file
stays in this process.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import time
from pathlib import Path

from inference.ops.config import parse_service_config
from inference.ops.target import OpsError, Target

PROBE = Path(__file__).with_name("probe.py")
MANIFEST = "/var/lib/vlmkit/manifest.json"
# probe.py travels on the command line, base64-encoded: piping it through Fabric's stdin goes a
# character at a time (seconds per kilobyte), and the server needs no file of ours.
_RUN_PROBE = "import base64, sys; exec(compile(base64.b64decode(sys.argv.pop(1)), 'vlmkit-probe', 'exec'))"


def probe_command(*args: str) -> list[str]:
    return ["python3", "-c", _RUN_PROBE, base64.b64encode(PROBE.read_bytes()).decode(), *args]


class Remote:
    def __init__(self, target: Target, connect_timeout: float = 15) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.connection = None
        self.model_path = "/var/lib/vlmkit/model"
        self._config_read = False

    # --- connection ------------------------------------------------------------------------------

    def open(self) -> Remote:
        """Connect (once: a second call while connected keeps the connection)."""
        if self.connection is not None and self.connection.is_connected:
            return self
        from fabric import Connection
        from paramiko.ssh_exception import (
            AuthenticationException,
            BadHostKeyException,
            NoValidConnectionsError,
            SSHException,
        )

        # paramiko logs a traceback for every failed handshake; the OpsError below says it in one line.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        target = self.target
        connect_kwargs = {"key_filename": target.key_file} if target.key_file else {}
        if target.key_file and not Path(target.key_file).is_file():
            raise OpsError(
                f"the SSH key {target.key_file} does not exist (run from the folder the inventory's "
                "relative paths start from, usually the repository root)"
            )
        connection = Connection(
            host=target.address,
            user=target.user,
            port=target.port,
            connect_timeout=int(self.connect_timeout),
            connect_kwargs=connect_kwargs,
        )
        if target.check_host_keys:
            # Fabric accepts any unknown host key; here it is refused unless the operator accepts it.
            from inference.ops.hostkeys import UnknownHostKeyPolicy

            connection.client.load_system_host_keys()
            connection.client.set_missing_host_key_policy(
                UnknownHostKeyPolicy(target.describe(), target.accept_host_key)
            )
        try:
            connection.open()
        except BadHostKeyException as exc:
            raise OpsError(f"{target.describe()}: its SSH host key is not the one in known_hosts ({exc})") from None
        except AuthenticationException:
            raise OpsError(
                f"{target.describe()}: SSH login refused for user {connection.user!r} "
                f"(key: {target.key_file or 'agent/default keys'})"
            ) from None
        except (NoValidConnectionsError, TimeoutError, OSError) as exc:
            raise OpsError(f"{target.describe()}: cannot connect over SSH: {exc}") from None
        except SSHException as exc:
            raise OpsError(f"{target.describe()}: SSH failed: {exc}") from None
        connection.transport.set_keepalive(30)
        self.connection = connection
        return self

    @property
    def transport(self):
        return self.connection.transport

    def reconnect(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection.client.close()  # Fabric skips this when the transport already died
            self.connection = None

    def __enter__(self) -> Remote:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- commands --------------------------------------------------------------------------------

    def command(self, args: list[str] | str, privileged: bool = False) -> str:
        line = args if isinstance(args, str) else " ".join(shlex.quote(str(arg)) for arg in args)
        if privileged and self.target.needs_sudo:
            line = "sudo -n " + line
        return line

    def run(self, args: list[str] | str, privileged: bool = False, timeout: float | None = None):
        """Run quietly; the result (stdout, stderr, exited) is returned, a non-zero exit does not raise."""
        return self.connection.run(
            self.command(args, privileged), hide=True, warn=True, timeout=timeout, in_stream=False
        )

    def stream(self, args: list[str], privileged: bool = False, pty: bool = False):
        """Run with the output going straight to this terminal (logs, gpu-watch)."""
        return self.connection.run(self.command(args, privileged), hide=False, warn=True, pty=pty, in_stream=False)

    def check(self, args: list[str], privileged: bool = False, what: str = "") -> str:
        result = self.run(args, privileged)
        if not result.ok:
            message = (result.stderr or result.stdout).strip()
            if "a password is required" in message or "sudo:" in message:
                message += f" (user {self.target.user} needs passwordless sudo)"
            raise OpsError(f"{self.target.describe()}: {what or ' '.join(args)} failed ({result.exited}): {message}")
        return result.stdout

    # --- the deployed service --------------------------------------------------------------------

    def read_config(self) -> None:
        """Take the bind address, port and model path from the deployed config.yaml, where it sets them."""
        path = f"{self.target.config_dir}/config.yaml"
        result = self.run(["cat", path], privileged=True)
        if not result.ok:
            return
        config = parse_service_config(result.stdout, f"{self.target.describe()}: {path}")
        self.target.service_host = config.host or self.target.service_host
        self.target.service_port = config.port or self.target.service_port
        self.model_path = config.model_path or self.model_path
        self._config_read = True

    def api_key(self) -> str:
        """$VLMKIT_API_KEY, else VLMKIT_API_KEY from the host's env file (read as root, never shown)."""
        if os.environ.get("VLMKIT_API_KEY"):
            return os.environ["VLMKIT_API_KEY"]
        result = self.run(["cat", self.target.env_file], privileged=True)
        if not result.ok:
            raise OpsError(
                f"{self.target.describe()}: cannot read {self.target.env_file} for the API key "
                "(set VLMKIT_API_KEY instead)"
            )
        for line in result.stdout.splitlines():
            name, _, value = line.strip().partition("=")
            if name == "VLMKIT_API_KEY":
                return value.strip().strip("'\"")
        return ""  # no key configured: the service accepts requests without one (loopback bind)

    def service_address(self) -> tuple[str, int]:
        """Where the service listens, as seen from the server (0.0.0.0 -> 127.0.0.1)."""
        if not self._config_read:
            self.read_config()
        host = self.target.service_host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "localhost": "127.0.0.1"}.get(host, host)
        return host, self.target.service_port

    def facts(self) -> dict:
        """Everything `status` shows, gathered on the server by probe.py in one round trip."""
        if not self._config_read:
            self.read_config()
        host, port = self.service_address()
        result = self.run(
            probe_command(self.target.unit, host, str(port), self.model_path, MANIFEST), privileged=True, timeout=120
        )
        if not result.ok:
            raise OpsError(
                f"{self.target.describe()}: the status probe failed ({result.exited}): "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
        return json.loads(result.stdout)

    def ready(self) -> dict:
        """/health/ready, asked on the server (no key needed)."""
        host, port = self.service_address()
        result = self.run(probe_command("ready", host, str(port)), timeout=60)
        if not result.ok:
            return {"ready": False, "error": (result.stderr or result.stdout).strip()[-300:]}
        return json.loads(result.stdout)

    def main_pid(self) -> int:
        out = self.check(["systemctl", "show", "-P", "MainPID", self.target.unit]).strip()
        return int(out or 0)

    def wait_ready(self, timeout: float, interval: float = 1.0) -> tuple[float, dict]:
        started = time.monotonic()
        last: dict = {}
        while time.monotonic() - started < timeout:
            last = self.ready()
            if last.get("ready"):
                return time.monotonic() - started, last
            state = self.run(["systemctl", "is-active", self.target.unit]).stdout.strip()
            if state == "failed":
                raise OpsError(
                    f"{self.target.unit}.service failed while starting; see `vlmkit ops logs {self.target.name} -n 50`"
                )
            time.sleep(interval)
        raise OpsError(f"{self.target.unit}.service was not ready within {timeout:.0f} s (last: {last})")
