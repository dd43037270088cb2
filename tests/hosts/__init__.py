"""Disposable Debian hosts with systemd as PID 1, for deploy tests (no Docker needed).

A base root filesystem is made once with debootstrap and cached; every host boots with
`systemd-nspawn -b` on an overlay of it, in its own network namespace, with a fixed MAC and IP on a
bridge, and is reached over SSH with a key made for the tests. apt inside the hosts goes through an
apt-cacher-ng listening on the bridge address; nothing else leaves this machine (the hosts have no
default route). Everything started here is stopped by the PID recorded when it was started.

See test-hosts notes in docs/deploy.md for the facts this rests on.
"""

from tests.hosts.nspawn import (
    AptCache,
    BaseImage,
    Bridge,
    HostError,
    TestHost,
    TestHostEnvironment,
    missing_tools,
)

__all__ = [
    "AptCache",
    "BaseImage",
    "Bridge",
    "HostError",
    "TestHost",
    "TestHostEnvironment",
    "missing_tools",
]
