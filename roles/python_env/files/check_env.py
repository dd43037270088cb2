"""Check a Python environment against a lock file; run with the environment's own interpreter.

Usage: check_env.py --lock FILE [--reuse FILE] [--import MODULE ...]
Exits 1 and names every difference when a locked package is missing or at another version, or when
a package that is not in the lock is installed (pip, setuptools and vlmkit itself excepted).
With --reuse (the vlmkit-reuse.json python_env writes when it layers a base environment with a CUDA
torch under the venv), the packages it names are checked in the base instead: missing is an error,
another version than the lock's is reported, not refused; the base's other packages are not counted.
Prints one JSON line: python, package count, vlmkit version, imported module versions, reused packages.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.metadata as metadata
import json
import re
import sys
from pathlib import Path

ALLOWED_EXTRAS = {"pip", "setuptools", "wheel", "vlmkit"}
# A reused base must have these; its other reused packages (xformers, say) are reported when absent.
REQUIRED_FROM_BASE = {"torch"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: {line!r} is not pinned with ==")
        pins[canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def installed(under: list[Path]) -> dict[str, str]:
    """Distributions whose metadata lies under one of the folders; the first found wins, as on import."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        location = Path(str(dist.locate_file(""))).resolve()
        if any(location == root or root in location.parents for root in under):
            found.setdefault(canonical(dist.metadata["Name"]), dist.version)
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lock", required=True)
    parser.add_argument("--reuse", type=Path, help="vlmkit-reuse.json")
    parser.add_argument("--import", dest="modules", action="append", default=[])
    args = parser.parse_args()
    pins = read_lock(args.lock)
    reuse = json.loads(args.reuse.read_text()) if args.reuse and args.reuse.exists() else None
    patterns = reuse["packages"] if reuse else []
    is_reused = lambda name: any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)  # noqa: E731
    own = installed([Path(sys.prefix).resolve()])
    base = installed([Path(path).resolve() for path in reuse["site_packages"]]) if reuse else {}
    # What imports find: the venv's own packages, then the base's (a pin the base already meets at the
    # lock's version is not installed again).
    visible = {**base, **own}
    problems, reused = [], {}
    for name, version in sorted(pins.items()):
        if is_reused(name):
            if name not in base and name in REQUIRED_FROM_BASE:
                problems.append(f"{name} (reused) is missing from {reuse['base']}")
            reused[name] = {"installed": base.get(name), "lock": version}
        elif name not in visible:
            problems.append(f"{name}=={version} is missing")
        elif visible[name] != version:
            problems.append(f"{name} is {visible[name]}, the lock says {version}")
    for name in sorted(set(own) - set(pins) - ALLOWED_EXTRAS):
        problems.append(f"{name}=={own[name]} is installed but not in the lock")
    if "vlmkit" not in own:
        problems.append("vlmkit is not installed")
    imported = {}
    for module in args.modules:
        try:
            imported[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - the point is to report any import failure
            problems.append(f"import {module} failed: {type(exc).__name__}: {exc}")
    if problems:
        print("the environment drifted from the lock:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "python": ".".join(map(str, sys.version_info[:3])),
                "packages": len(pins),
                "vlmkit": own.get("vlmkit"),
                "imports": imported,
                "reused": reused,
                "lock_mismatches": sorted(
                    f"{name} {seen['installed'] or 'absent'} (lock {seen['lock']})"
                    for name, seen in reused.items()
                    if seen["installed"] != seen["lock"]
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
