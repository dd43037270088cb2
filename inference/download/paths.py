"""What the mirror's listing may name: repository paths and content ids, and where they may land.

The listing comes from the network, and both its paths and its content ids become file names
here (the file itself, and its partial file). Everything is checked before it is used: a
hostile or broken mirror must not reach a file outside the target folder, nor vlmkit's own
state under DIR/.cache/vlmkit/.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from inference.download.errors import DownloadError

STATE_DIR = PurePosixPath(".cache") / "vlmkit"
# sha256 of an LFS file's content; git's blob sha1 of any other file.
CONTENT_ID = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "git-sha1": re.compile(r"^[0-9a-f]{40}$")}


class UnsafeListing(DownloadError):
    """The mirror listed a path or id that would land outside the folder, or is not what it claims."""


def check_repo_path(path: str) -> None:
    """Refuse a repository path that is not a plain relative path, or that lies in vlmkit's state folder."""
    parts = PurePosixPath(path).parts
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(part in ("..", ".", "") for part in path.split("/"))
    ):
        raise UnsafeListing(f"refusing a file with an unsafe path from the server: {path!r}")
    if parts[: len(STATE_DIR.parts)] == STATE_DIR.parts:
        raise UnsafeListing(f"refusing a file inside vlmkit's own state folder {STATE_DIR}/ from the server: {path!r}")


def check_content_id(algorithm: str, value: object, path: str) -> str:
    """`value` as lowercase hex of the length `algorithm` has; refuse anything else."""
    if not isinstance(value, str) or not CONTENT_ID[algorithm].match(value.lower()):
        raise UnsafeListing(f"the server lists {path!r} with an invalid {algorithm} id {value!r:.80}")
    return value.lower()


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, proven to stay inside `root` once symbolic links are followed."""
    target = root / relative
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafeListing(f"refusing to write {relative!r}: it resolves outside {root} (a symbolic link?)")
    return target
