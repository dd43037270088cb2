"""Forward a local port to the service over the SSH connection (like `ssh -L`), on Fabric's transport.

Not Fabric's own forward_local: that one binds in its thread (a busy port shows only at the end),
cannot pick a free port, and stops forwarding for good the first time the far side refuses a
connection (the service restarting). This one binds before it returns, keeps serving through
refusals, and opens the SSH connection again if it dropped.
"""

from __future__ import annotations

import select
import socket
import sys
import threading

from inference.ops.remote import Remote
from inference.ops.target import OpsError

CHUNK = 64 * 1024


class Tunnel:
    def __init__(
        self,
        remote: Remote,
        remote_host: str,
        remote_port: int,
        local_port: int = 0,
        local_host: str = "127.0.0.1",
        log=sys.stderr,
    ) -> None:
        self.remote = remote
        self.remote_address = (remote_host, remote_port)
        self.local_host = local_host
        self.log = log
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        try:
            self._listener = socket.create_server((local_host, local_port))
        except OSError as exc:
            raise OpsError(
                f"cannot listen on {local_host}:{local_port}: {exc.strerror} "
                "(choose another --local-port, or 0 for any free one)"
            ) from None
        self.local_port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
        return f"http://{host}:{self.local_port}"

    def start(self) -> Tunnel:
        thread = threading.Thread(target=self._accept, name="tunnel-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> Tunnel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel = self._open_channel(peer)
            if channel is None:
                client.close()
                continue
            self.connections += 1
            thread = threading.Thread(target=self._pump, args=(client, channel), name="tunnel-pump", daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _open_channel(self, peer):
        from paramiko.ssh_exception import ChannelException, SSHException

        with self._lock:
            for attempt in range(2):
                connection = self.remote.connection
                if connection is None or connection.transport is None or not connection.transport.is_active():
                    self._say(f"the SSH connection to {self.remote.target.describe()} dropped; connecting again")
                    try:
                        self.remote.reconnect()
                    except OpsError as exc:
                        self._say(str(exc))
                        return None
                try:
                    return self.remote.transport.open_channel("direct-tcpip", self.remote_address, peer, timeout=30)
                except ChannelException as exc:
                    host, port = self.remote_address
                    self._say(
                        f"the server refused the connection to {host}:{port} ({exc.text}): "
                        f"is {self.remote.target.unit}.service running?"
                    )
                    return None
                except (SSHException, EOFError, OSError) as exc:
                    if attempt:
                        self._say(f"cannot open a channel through SSH: {exc}")
                        return None
                    self.remote.close()  # the next attempt connects again
        return None

    def _pump(self, client: socket.socket, channel) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, channel], [], [], 0.5)
                if client in readable:
                    data = client.recv(CHUNK)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(CHUNK)
                    if not data:
                        break
                    client.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            client.close()

    def _say(self, message: str) -> None:
        if self.log is not None:
            print(f"vlmkit ops tunnel: {message}", file=self.log, flush=True)
