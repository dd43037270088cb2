"""Share wheels out into folders OUT/wheels-1, -2, ... of at most LIMIT bytes each (one device call each).

Usage: split.py OUT LIMIT DIR [DIR ...]   (each DIR's wheels keep its name: wheels-N/DIRNAME/*.whl)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main() -> int:
    out, limit, folders = Path(sys.argv[1]), int(sys.argv[2]), [Path(arg) for arg in sys.argv[3:]]
    wheels = sorted((wheel for folder in folders for wheel in folder.glob("*.whl")), key=lambda w: -w.stat().st_size)
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for wheel in wheels:
        size = wheel.stat().st_size
        if size > limit:
            raise SystemExit(f"{wheel.name} ({size} bytes) is larger than a part ({limit})")
        for index, used in enumerate(sizes):
            if used + size <= limit:
                parts[index].append(wheel)
                sizes[index] += size
                break
        else:
            parts.append([wheel])
            sizes.append(size)
    for index, part in enumerate(parts, start=1):
        for wheel in part:
            target = out / f"wheels-{index}" / wheel.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, target / wheel.name)
    print(f"{len(parts)} parts: " + ", ".join(f"{size / 1e6:.0f} MB" for size in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
