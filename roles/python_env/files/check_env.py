"""Check a Python environment against a lock file; run with the environment's own interpreter.

Usage: check_env.py --lock FILE [--import MODULE ...]
Exits 1 and names every difference when a locked package is missing or at another version, or when
a package that is not in the lock is installed (pip, setuptools and vlmkit itself excepted).
Prints one JSON line: python, package count, vlmkit version, imported module versions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import re
import sys

ALLOWED_EXTRAS = {"pip", "setuptools", "wheel", "vlmkit"}


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


def installed() -> dict[str, str]:
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lock", required=True)
    parser.add_argument("--import", dest="modules", action="append", default=[])
    args = parser.parse_args()
    pins, have = read_lock(args.lock), installed()
    problems = []
    for name, version in sorted(pins.items()):
        if name not in have:
            problems.append(f"{name}=={version} is missing")
        elif have[name] != version:
            problems.append(f"{name} is {have[name]}, the lock says {version}")
    for name in sorted(set(have) - set(pins) - ALLOWED_EXTRAS):
        problems.append(f"{name}=={have[name]} is installed but not in the lock")
    if "vlmkit" not in have:
        problems.append("vlmkit is not installed")
    imported = {}
    for module in args.modules:
        try:
            imported[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:  # the point is to report any import failure
            problems.append(f"import {module} failed: {type(exc).__name__}: {exc}")
    if problems:
        print("the environment drifted from the lock:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(json.dumps({
        "python": "%d.%d.%d" % sys.version_info[:3],
        "packages": len(pins),
        "vlmkit": have.get("vlmkit"),
        "imports": imported,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
