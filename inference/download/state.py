"""What vlmkit knows about a download folder, kept under DIR/.cache/vlmkit/.

- verified.json: for each file verified so far, its size, mtime and hash. A file whose size
  and mtime still match its record is not hashed again (unless --verify).
- complete.json: the completion marker (repo, revision, sha, files, verified_at), written
  only after every file of the snapshot is verified; removed before any file is replaced.
- partial/<content hash>.part: bytes of a file still in transfer, resumed by the next run.
- lock: held while a download runs, so two runs never write the same folder. The records are
  read once the lock is held: a run that waited sees what the run before it verified.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from inference.download.paths import STATE_DIR, UnsafeListing, check_repo_path, inside
from inference.download.remote import RemoteFile


class FolderState:
    def __init__(self, local_dir: Path) -> None:
        self.local_dir = local_dir
        self.dir = local_dir / STATE_DIR
        self.partial_dir = self.dir / "partial"
        self.marker_path = self.dir / "complete.json"
        self.records_path = self.dir / "verified.json"
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}

    @contextmanager
    def exclusive(self, on_wait):
        """Hold the folder's lock; call `on_wait()` once if another run holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            self.records = _read_json(self.records_path) or {}
            yield

    # --- per-file records -------------------------------------------------------------------
    def trusted(self, remote: RemoteFile) -> bool:
        """Verified earlier, and size and mtime unchanged since."""
        record = self.records.get(remote.path)
        if not record or record.get("digest") != list(remote.digest):
            return False
        return _stat_matches(self.local_dir / remote.path, record)

    def record(self, remote: RemoteFile) -> None:
        st = os.stat(self.local_dir / remote.path)
        with self._lock:
            self.records[remote.path] = {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "digest": list(remote.digest),
            }
            _write_json(self.records_path, self.records)

    def forget(self, path: str) -> None:
        with self._lock:
            if self.records.pop(path, None) is not None:
                _write_json(self.records_path, self.records)

    # --- completion marker ------------------------------------------------------------------
    def marker(self) -> dict | None:
        return _read_json(self.marker_path)

    def marker_still_holds(self, marker: dict) -> bool:
        """The marker lists files, each still verified (its record agrees) and on disk as when verified."""
        files = marker.get("files")
        if not isinstance(files, list) or not files:
            return False
        if not all(isinstance(entry, dict) and self._still_verified(entry) for entry in files):
            return False
        return sum(entry["size"] for entry in files) == marker.get("bytes")

    def _still_verified(self, entry: dict) -> bool:
        path = entry.get("path")
        if not isinstance(path, str):
            return False
        try:
            check_repo_path(path)
            local = inside(self.local_dir, path)
        except UnsafeListing:
            return False
        record = self.records.get(path)
        return (
            record is not None
            and all(record.get(key) == entry.get(key) for key in ("size", "mtime_ns", "digest"))
            and _stat_matches(local, record)
        )

    def write_marker(self, marker: dict) -> None:
        _write_json(self.marker_path, marker)

    def remove_marker(self) -> None:
        self.marker_path.unlink(missing_ok=True)

    # --- partial files ----------------------------------------------------------------------
    def partial_path(self, remote: RemoteFile) -> Path:
        return self.partial_dir / f"{remote.content_id}.part"

    def partial_size(self, remote: RemoteFile) -> int:
        try:
            return self.partial_path(remote).stat().st_size
        except FileNotFoundError:
            return 0

    def drop_stale_partials(self, keep: set[str]) -> None:
        if not self.partial_dir.is_dir():
            return
        for entry in self.partial_dir.iterdir():
            if entry.name not in keep:
                entry.unlink(missing_ok=True)


def _stat_matches(path: Path, record: dict) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
