"""Build the vlmkit wheel on the controller from a clean copy of the repository's files.

Copies the files git knows about (tracked and untracked-but-not-ignored) to a scratch folder, so a
stale build/ or egg-info in the work tree cannot leak into the wheel, and builds with a fixed
SOURCE_DATE_EPOCH so the same sources give the same bytes (the deploy stays idempotent).
Prints one JSON object: {"wheel": PATH, "sha256": HEX, "changed": BOOL}.
Usage: build_wheel.py REPO_DIR OUTPUT_DIR
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIXED_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip entry can carry


# Outside a git checkout (a copy of the tree, no git), these are left out instead of git's ignored files.
UNTRACKED_NAMES = {".git", ".venv", ".cache", ".gpuhost", "build", "dist", "__pycache__", ".pytest_cache"}


def source_files(repo: Path) -> list[str]:
    listing = (
        subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
        )
        if shutil.which("git")
        else None
    )
    if listing is not None and listing.returncode == 0:
        return sorted({name for name in listing.stdout.decode().split("\0") if name and (repo / name).is_file()})
    return sorted(
        str(path.relative_to(repo))
        for path in repo.rglob("*")
        if path.is_file()
        and not any(part in UNTRACKED_NAMES or part.endswith(".egg-info") for part in path.relative_to(repo).parts)
    )


def main() -> int:
    repo, output = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    output.mkdir(parents=True, exist_ok=True)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.glob("*.whl")}
    with tempfile.TemporaryDirectory(prefix="vlmkit-wheel-") as scratch:
        source = Path(scratch) / "src"
        for name in source_files(repo):
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, target)
        built = Path(scratch) / "dist"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(built), str(source)]
        if importlib.util.find_spec("setuptools") is not None:
            command.insert(4, "--no-build-isolation")
        env = dict(os.environ, SOURCE_DATE_EPOCH=FIXED_EPOCH, PYTHONHASHSEED="0", PYTHONWARNINGS="ignore")
        subprocess.run(command, check=True, env=env, stdout=sys.stderr)
        wheels = list(built.glob("vlmkit-*.whl"))
        if len(wheels) != 1:
            print(f"expected one vlmkit wheel, got {[w.name for w in wheels]}", file=sys.stderr)
            return 1
        wheel = wheels[0]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        for old in output.glob("vlmkit-*.whl"):
            if old.name != wheel.name:
                old.unlink()
        final = output / wheel.name
        changed = before.get(wheel.name) != digest
        if changed:
            shutil.copyfile(wheel, final)
    print(json.dumps({"wheel": str(final), "sha256": digest, "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
