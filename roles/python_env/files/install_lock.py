"""Write the lock as pip installs it: every pin, less the packages reused from a base environment.

Usage: install_lock.py LOCK OUT [--reuse GLOB ...]
Names are compared canonically (PEP 503: lower case, runs of -_. as one -). Writes OUT only when its
content changes and prints one JSON line: {"changed": bool, "pins": N, "reused": {name: version}}.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("lock", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--reuse", action="append", default=[])
    args = parser.parse_args()
    kept, reused = [], {}
    for raw in args.lock.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{args.lock}: {line!r} is not pinned with ==")
        base_name = canonical(name.split("[")[0])
        if any(fnmatch.fnmatchcase(base_name, pattern) for pattern in args.reuse):
            reused[base_name] = version.split(";")[0].strip()
        else:
            kept.append(line)
    content = "".join(f"{line}\n" for line in kept)
    changed = not args.out.exists() or args.out.read_text(encoding="utf-8") != content
    if changed:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(content, encoding="utf-8")
    print(json.dumps({"changed": changed, "pins": len(kept), "reused": reused}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
