"""Hashing local files against the repository's metadata.

LFS files (the weights) carry the sha256 of their content in the repo tree; other files
carry their git blob id, sha1("blob <size>\\0" + content). Both are checked, so every file
in the folder is verified, not only the shards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from inference.download.remote import RemoteFile

CHUNK = 8 * 1024 * 1024


def digest_of(path: Path, algorithm: str, on_bytes: Callable[[int], None] = lambda n: None) -> str:
    size = path.stat().st_size
    if algorithm == "sha256":
        h = hashlib.sha256()
    elif algorithm == "git-sha1":
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % size)
    else:
        raise ValueError(f"unknown digest {algorithm}")
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            on_bytes(len(chunk))
    return h.hexdigest()


def mismatch(path: Path, remote: RemoteFile, on_bytes: Callable[[int], None] = lambda n: None) -> str | None:
    """None when `path` holds exactly `remote`'s content, else what is wrong with it."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    algorithm, expected = remote.digest
    actual = digest_of(path, algorithm, on_bytes)
    if actual != expected:
        return f"{algorithm} {actual[:12]}…, expected {expected[:12]}…"
    return None
