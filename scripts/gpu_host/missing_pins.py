"""Print the lock's pins that a base environment lacks or has at another version.

Usage: missing_pins.py LOCK BASE_FREEZE
Torch's family (python_env_reused_packages, read from the role's defaults) is left out: the deploy reuses
it from the base.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import yaml

ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / "roles" / "python_env" / "defaults" / "main.yml"
REUSED = yaml.safe_load(ROLE_DEFAULTS.read_text())["python_env_reused_packages"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            found[canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return found


def main() -> int:
    lock, base = pins(Path(sys.argv[1])), pins(Path(sys.argv[2]))
    for name, version in sorted(lock.items()):
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in REUSED) and base.get(name) != version:
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
