"""Graft a Debian 12 root's systemd, D-Bus and OpenSSH onto a host root that lacks them.

Usage: graft.py DEBIAN_ROOT HOST_ROOT
The host root is an Ubuntu (merged /usr) with the GPU user space and a CUDA torch but no systemd.
Debian 12 is not merged-/usr: its /bin, /sbin and /lib land under /usr. A path that already exists
in the host root is kept (Ubuntu's newer libraries and tools stay); only what is missing is copied,
so a library comes from Debian only where Ubuntu lacks that soname. Prints how many entries it added.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
SKIPPED = {
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var/lib/machines",
    "boot",
    "home",
    "root",
    "media",
    "mnt",
    "srv",
    "opt",
    # The package managers' state stays Ubuntu's: Debian's files were not installed through it.
    "var/lib/apt",
    "var/lib/dpkg",
    "var/cache",
    "var/log",
    "etc/apt",
}


def host_path(relative: Path) -> Path:
    first, *rest = relative.parts
    return Path(MERGED.get(first, first), *rest)


def main() -> int:
    debian, host = Path(sys.argv[1]), Path(sys.argv[2])
    added = 0
    for directory, subdirs, files in os.walk(debian):
        relative_dir = Path(directory).relative_to(debian)
        subdirs[:] = [name for name in subdirs if str(relative_dir / name) not in SKIPPED]
        for name in subdirs + files:
            source = Path(directory, name)
            target = host / host_path(relative_dir / name)
            if os.path.lexists(target) or (source.is_dir() and not source.is_symlink()):
                if source.is_dir() and not source.is_symlink() and not os.path.lexists(target):
                    target.mkdir(parents=True)
                    shutil.copystat(source, target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
            added += 1
    print(f"graft: added {added} files from {debian} to {host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
