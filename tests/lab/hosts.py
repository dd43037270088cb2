"""Disposable Debian hosts with systemd as PID 1, for deploy tests (no Docker needed).

A base root filesystem is made once with debootstrap and cached; every host boots with
`systemd-nspawn -b` on an overlay of it, in its own network namespace, with a fixed MAC and IP on a
bridge, and is reached over SSH with a key made for the tests. apt inside the hosts goes through an
apt-cacher-ng listening on the bridge address; nothing else leaves this machine (the hosts have no
default route). Everything started here is stopped by the PID recorded when it was started.
Host indices (and so addresses 10.213.0.N+10): deploy 1-9, operations 21-29, fleet 31-39, GPU roles 41-49.

Facts this code relies on (measured on this kind of machine, Debian 12 as root, PID 1 not systemd):
- `systemd-nspawn -b` needs `--register=no --keep-unit` here, and each running container its own
  cgroup (systemd and unified hierarchies) that the launcher moves itself into before exec'ing nspawn.
- A fixed MAC per host avoids a long SSH stall after a restart (stale ARP entry).
- minbase has no /etc/hosts; without one, fact gathering waits on DNS.
- SIGTERM to systemd-nspawn makes the container's systemd power off cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.paths import CACHE_DIR
from tests.lab.processes import start_process, stop_process
from tests.lab.waiting import WaitTimeout, wait_until

SSH_KEY = CACHE_DIR / "ssh" / "id_ed25519"

SUITE = "bookworm"


def machine_debian_mirror(sources: Path = Path("/etc/apt")) -> str | None:
    """The Debian archive this machine's own apt uses for SUITE (deb822 or one-line sources), if any."""
    for path in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.split()
            if (
                "deb" in fields.get("types", [])
                and SUITE in fields.get("suites", [])
                and "main" in fields.get("components", [])
            ):
                return fields["uris"][0]
    for path in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]:
        for line in path.read_text().splitlines() if path.exists() else []:
            words = [word for word in line.split("#", 1)[0].split() if not word.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                return words[1]
    return None


# Where debootstrap and the hosts' apt cache fetch Debian from: VLMKIT_TEST_DEBIAN_MIRROR, else the
# archive this machine's apt already uses (a local mirror stays local). Nothing is hard-coded.
DEBIAN_MIRROR = os.environ.get("VLMKIT_TEST_DEBIAN_MIRROR") or machine_debian_mirror() or ""
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "iproute2",
    "ca-certificates",
    "sudo",
)
# Bumping this rebuilds the cached base image.
BASE_RECIPE_VERSION = "2"

BRIDGE_NAME = "vlmkbr0"
NETWORK = ipaddress.ip_network("10.213.0.0/24")
BRIDGE_ADDRESS = ipaddress.ip_address("10.213.0.1")
APT_CACHE_PORT = 3142

REQUIRED_TOOLS = ("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen", "apt-cacher-ng", "mount")

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=3",
)  # fmt: skip


class HostError(RuntimeError):
    """A test host could not be built, booted, reached or stopped."""


def missing_tools() -> list[str]:
    """Tools (or privileges) this module needs that this machine lacks; empty when all is there."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root privileges")
    return missing


def _run(args: list[str] | tuple[str, ...], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise HostError(f"{' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _port_answers(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=1):
        return True


def ensure_ssh_key() -> Path:
    """The key pair the tests log in with (made once, kept in the cache)."""
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vlmkit-test-hosts", "-f", str(SSH_KEY)])
    return SSH_KEY


@dataclass
class BaseImage:
    """A Debian root filesystem made once with debootstrap; hosts boot on overlays of it."""

    path: Path = CACHE_DIR / f"base-{SUITE}"
    debs: Path = CACHE_DIR / "debootstrap-debs"

    @property
    def recipe(self) -> str:
        text = f"{BASE_RECIPE_VERSION} {SUITE} {DEBIAN_MIRROR} {','.join(BASE_PACKAGES)}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def stamp(self) -> Path:
        return self.path.with_name(self.path.name + ".recipe")

    def is_current(self) -> bool:
        return self.stamp.exists() and self.stamp.read_text().strip() == self.recipe and self.path.is_dir()

    def ensure(self) -> Path:
        """Build the base image unless a current one is cached; returns its path."""
        if not DEBIAN_MIRROR:
            raise HostError(
                f"no Debian {SUITE} archive in this machine's apt sources: set VLMKIT_TEST_DEBIAN_MIRROR to one"
            )
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with open(CACHE_DIR / "base.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_current():
                self._build()
        return self.path

    def _build(self) -> None:
        staging = self.path.with_name(self.path.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        self.debs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--cache-dir={self.debs}",
                SUITE,
                str(staging),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise HostError(
                f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
            )
        # Every host gets its own identity at first boot.
        (staging / "etc/machine-id").write_text("")
        with contextlib.suppress(FileNotFoundError):
            (staging / "var/lib/dbus/machine-id").unlink()
        for key in (staging / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        # No background apt runs racing the deploy for the dpkg lock.
        for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
            link = staging / "etc/systemd/system" / timer
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        (staging / "etc/apt/sources.list").write_text(f"deb {DEBIAN_MIRROR} {SUITE} main\n")
        shutil.rmtree(self.path, ignore_errors=True)
        staging.rename(self.path)
        self.stamp.write_text(self.recipe + "\n")


@dataclass
class Bridge:
    """The Linux bridge the hosts' veth pairs hang off; the machine's side has BRIDGE_ADDRESS."""

    name: str = BRIDGE_NAME
    address: ipaddress.IPv4Address = BRIDGE_ADDRESS
    created: bool = False

    def exists(self) -> bool:
        return _run(["ip", "link", "show", self.name], check=False).returncode == 0

    def up(self) -> None:
        if not self.exists():
            _run(["ip", "link", "add", self.name, "type", "bridge"])
            self.created = True
        addresses = _run(["ip", "-o", "addr", "show", "dev", self.name]).stdout
        if f" {self.address}/" not in addresses:
            _run(["ip", "addr", "add", f"{self.address}/{NETWORK.prefixlen}", "dev", self.name])
        _run(["ip", "link", "set", self.name, "up"])

    def down(self) -> None:
        if self.created and self.exists():
            _run(["ip", "link", "delete", self.name], check=False)
            self.created = False


@dataclass
class AptCache:
    """apt-cacher-ng on the bridge address, so hosts without a route out can still use apt."""

    directory: Path = CACHE_DIR / "apt-cacher-ng"
    address: str = str(BRIDGE_ADDRESS)
    port: int = APT_CACHE_PORT
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> None:
        conf = self.directory / "conf"
        for sub in ("conf", "cache", "log", "run"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        # The packaged default mapping names a mirror this sandbox cannot resolve.
        (conf / "backends_debian").write_text(DEBIAN_MIRROR.rstrip("/") + "/\n")
        (conf / "acng.conf").write_text(
            "\n".join(
                [
                    f"CacheDir: {self.directory / 'cache'}",
                    f"LogDir: {self.directory / 'log'}",
                    "SupportDir: /usr/lib/apt-cacher-ng",
                    f"SocketPath: {self.directory / 'run' / 'socket'}",
                    f"PidFile: {self.directory / 'run' / 'pid'}",
                    f"BindAddress: {self.address}",
                    f"Port: {self.port}",
                    "ForeGround: 1",
                    "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian",
                    "ExThreshold: 4",
                    "",
                ]
            )
        )
        self.process = start_process(
            ["apt-cacher-ng", "-c", str(conf)], self.directory / "log" / "foreground.log", append=True
        )
        try:
            wait_until(lambda: _port_answers(self.address, self.port), 15, f"apt-cacher-ng on {self.url}")
        except WaitTimeout as exc:
            self.stop()
            raise HostError(str(exc)) from exc

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.process = None


@dataclass
class TestHost:
    """One disposable host: overlay on the base image, own netns, fixed MAC and IP, systemd as PID 1."""

    name: str
    index: int
    base: BaseImage
    apt_proxy: str | None = None
    bridge: str = BRIDGE_NAME
    process: subprocess.Popen | None = None
    _console: object = field(default=None, repr=False)

    __test__ = False  # not a pytest test class

    def __post_init__(self) -> None:
        if not 2 <= self.index + 10 <= 250:
            raise HostError(f"host index {self.index} is outside the range this network allows")
        self.workdir = CACHE_DIR / "run" / self.name

    @property
    def ip(self) -> str:
        return str(NETWORK.network_address + 10 + self.index)

    @property
    def mac(self) -> str:
        # Locally administered, derived from the IP so it never changes across restarts.
        last = [int(part) for part in self.ip.split(".")]
        return "02:76:6c:{:02x}:{:02x}:{:02x}".format(*tuple(last[1:]))

    @property
    def netns(self) -> str:
        return f"vlmkit-{self.name}"[:32]

    @property
    def veth(self) -> str:
        return f"vk{self.index}-{hashlib.sha1(self.name.encode()).hexdigest()[:6]}"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def cgroups(self) -> list[Path]:
        return [Path("/sys/fs/cgroup") / tree / f"vlmkit-{self.name}" for tree in ("systemd", "unified")]

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Boot the host (first call: prepare the overlay and network) and wait until SSH answers."""
        if self.process is not None and self.process.poll() is None:
            raise HostError(f"{self.name} is already running")
        if not self._mounted():
            self._prepare_overlay()
        self._prepare_network()
        for cgroup in self.cgroups:
            if cgroup.parent.is_dir():
                cgroup.mkdir(exist_ok=True)
        cgroup_procs = [str(cgroup / "cgroup.procs") for cgroup in self.cgroups if cgroup.is_dir()]

        def enter_own_cgroup() -> None:
            for procs in cgroup_procs:
                with open(procs, "w") as handle:
                    handle.write(str(os.getpid()))

        self.process = start_process(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                f"--directory={self.root}",
                f"--machine={self.name}",
                "--register=no",
                "--keep-unit",
                f"--network-namespace-path=/run/netns/{self.netns}",
                "--console=read-only",
            ],
            self.workdir / "console.log",
            append=True,
            preexec_fn=enter_own_cgroup,
        )
        (self.workdir / "nspawn.pid").write_text(f"{self.process.pid}\n")
        self.wait_until_up(timeout)

    def wait_until_up(self, timeout: float) -> None:
        answers = []

        def running() -> bool:
            result = self.ssh("systemctl is-system-running --wait", check=False, timeout=timeout)
            answers.append((result.stdout + result.stderr).strip())
            return result.stdout.strip() in ("running", "degraded")

        def nspawn_exited() -> str | None:
            if self.process is not None and self.process.poll() is not None:
                return f"systemd-nspawn exited ({self.process.returncode}); see {self.workdir}/console.log"
            return None

        try:
            wait_until(
                running,
                timeout,
                lambda: f"{self.name} to come up (last answer: {answers[-1:]!r})",
                interval=0.5,
                give_up=nspawn_exited,
            )
        except WaitTimeout as exc:
            raise HostError(str(exc)) from exc

    def shutdown(self, timeout: float = 60) -> None:
        """Power the container off cleanly (SIGTERM to the nspawn we started), keep its disk."""
        stop_process(self.process, timeout=timeout)
        self.process = None
        for cgroup in self.cgroups:
            _remove_cgroup_tree(cgroup)

    def reboot(self, timeout: float = 90) -> None:
        """Restart the container: clean power-off, then boot again on the same overlay."""
        self.shutdown()
        self.start(timeout)

    def destroy(self) -> None:
        """Stop the host and remove everything made for it (overlay, netns, cgroups)."""
        self.shutdown()
        if self._mounted():
            _run(["umount", str(self.root)], check=False)
        _run(["ip", "netns", "delete", self.netns], check=False)
        _run(["ip", "link", "delete", self.veth], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- access -------------------------------------------------------------------------------

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        args = ["ssh", *SSH_OPTIONS, "-i", str(SSH_KEY), f"root@{self.ip}", command]
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{self.name}: {command!r} timed out after {timeout} s") from exc
        if check and result.returncode != 0:
            raise HostError(f"{self.name}: {command!r} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # --- internals ----------------------------------------------------------------------------

    def _mounted(self) -> bool:
        return os.path.ismount(self.root)

    def _prepare_overlay(self) -> None:
        for sub in ("upper", "work", "root"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mount", "-t", "overlay", "overlay",
                "-o", f"lowerdir={self.base.path},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                str(self.root),
            ]
        )  # fmt: skip
        root = self.root
        (root / "etc/hostname").write_text(self.name + "\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{self.ip} {self.name}\n::1 localhost ip6-localhost\n")
        # Nothing answers DNS here: fail fast on loopback instead of waiting for a timeout.
        resolv = root / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text("nameserver 127.0.0.1\n")
        if self.apt_proxy:
            (root / "etc/apt/apt.conf.d/01proxy").write_text(f'Acquire::http::Proxy "{self.apt_proxy}";\n')
        if not any((root / "etc/ssh").glob("ssh_host_*_key")):
            _run(["ssh-keygen", "-A", "-f", str(root)])
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(SSH_KEY.with_suffix(".pub").read_text())
        authorized.chmod(0o600)

    def _prepare_network(self) -> None:
        if _run(["ip", "netns", "pids", self.netns], check=False).returncode != 0:
            _run(["ip", "netns", "add", self.netns])
        if _run(["ip", "-n", self.netns, "link", "show", "host0"], check=False).returncode == 0:
            return
        _run(["ip", "link", "delete", self.veth], check=False)
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "host0", "netns", self.netns])
        _run(["ip", "link", "set", self.veth, "master", self.bridge])
        _run(["ip", "link", "set", self.veth, "up"])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.netns, "link", "set", "host0", "address", self.mac])
        _run(["ip", "-n", self.netns, "addr", "add", f"{self.ip}/{NETWORK.prefixlen}", "dev", "host0"])
        _run(["ip", "-n", self.netns, "link", "set", "host0", "up"])
        # Deliberately no default route: the host reaches the bridge address and its peers, nothing else.


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for directory, _subdirs, _files in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


@dataclass
class TestHostEnvironment:
    """Everything a deploy test needs on this machine: base image, bridge, apt cache, hosts."""

    base: BaseImage = field(default_factory=BaseImage)
    bridge: Bridge = field(default_factory=Bridge)
    apt_cache: AptCache = field(default_factory=AptCache)
    hosts: dict[str, TestHost] = field(default_factory=dict)

    __test__ = False

    def start(self) -> None:
        missing = missing_tools()
        if missing:
            raise HostError("test hosts need: " + ", ".join(missing))
        ensure_ssh_key()
        self.base.ensure()
        self.bridge.up()
        self.apt_cache.start()

    def boot(self, name: str, index: int, timeout: float = 90) -> TestHost:
        """Boot a fresh host (a leftover overlay of the same name is discarded first)."""
        host = TestHost(name=name, index=index, base=self.base, apt_proxy=self.apt_cache.url)
        host.destroy()
        self.hosts[name] = host
        try:
            host.start(timeout)
        except BaseException:
            host.destroy()
            del self.hosts[name]
            raise
        return host

    def stop(self, keep_hosts: bool = False) -> None:
        for host in list(self.hosts.values()):
            if keep_hosts:
                continue
            host.destroy()
            del self.hosts[host.name]
        if not keep_hosts:
            self.apt_cache.stop()
            self.bridge.down()
