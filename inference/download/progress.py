"""Progress of a transfer or a verification: a bar on a terminal, plain periodic lines otherwise.

The lines ("download: 1.2 GiB of 49.0 GiB (2%), 3 of 10 files, 35.1 MiB/s, ETA 23m10s") are
meant for systemd's journal and Ansible logs, where a redrawn bar is noise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO


class Cancelled(Exception):
    """Raised inside a transfer when the run is being stopped (another file failed, Ctrl-C)."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts bytes of one phase ("download", "verify") across worker threads and reports them."""

    def __init__(
        self,
        label: str,
        total_bytes: int,
        total_files: int,
        *,
        stream: TextIO,
        bar: bool,
        interval: float,
        emit: Callable[[str], None],
    ) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.stream = stream
        self.bar = bar
        self.interval = interval
        self.emit = emit
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._done = 0  # bytes that count towards total_bytes (may go back when a server ignores Range)
        self._per_key: dict[str, int] = {}
        self._moved = 0  # bytes read from the network or disk in this run, for the rate
        self._files_done = 0
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- counting ---------------------------------------------------------------------------
    def set(self, key: str, n: int) -> None:
        """Bytes of `key` (a file) that are done, e.g. what a partial file already holds."""
        if self.cancel.is_set():
            raise Cancelled()
        with self._lock:
            self._done += n - self._per_key.get(key, 0)
            self._per_key[key] = n

    def add(self, key: str, n: int) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        with self._lock:
            self._per_key[key] = self._per_key.get(key, 0) + n
            self._done += n
            if n > 0:
                self._moved += n

    def file_done(self) -> None:
        with self._lock:
            self._files_done += 1

    def hook(self, key: str):
        """A class huggingface_hub's http_get takes as `tqdm_class`, feeding this Progress for `key`."""
        progress = self

        class _Hook:
            def __init__(self, *args, initial: int = 0, **kwargs) -> None:
                # http_get opens its bar with the bytes it resumes from: 0 when the server
                # ignored the Range request and the partial file was truncated.
                progress.set(key, int(initial or 0))

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                return None

            def update(self, n=1) -> None:
                progress.add(key, int(n or 0))

            def close(self) -> None:
                return None

            def set_postfix_str(self, *args, **kwargs) -> None:
                return None

            # Having these makes huggingface_hub's Xet reporter use one bar (this one) for both
            # reconstructed and transferred bytes, so bytes are counted once.
            def update_transfer(self, n=1) -> None:
                return None

            def set_transfer_postfix_str(self, *args, **kwargs) -> None:
                return None

        return _Hook

    # --- reporting --------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.label}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if exc_type is None:
            elapsed = max(time.monotonic() - self._start, 1e-6)
            self.emit(
                f"{self.label}: {human_bytes(self._moved)} in {human_duration(elapsed)}"
                f" ({human_bytes(self._moved / elapsed)}/s)"
            )

    def _run(self) -> None:
        if self.bar:
            self._run_bar()
        else:
            while not self._stop.wait(self.interval):
                self.emit(self.line())

    def _run_bar(self) -> None:
        from tqdm import tqdm

        with tqdm(
            total=self.total_bytes,
            desc=self.label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            leave=False,
        ) as bar:
            shown = 0
            while not self._stop.wait(0.2):
                done = self._done
                bar.update(done - shown)
                shown = done
                bar.set_postfix_str(f"{self._files_done}/{self.total_files} files", refresh=False)

    def line(self) -> str:
        with self._lock:
            done, moved, files = self._done, self._moved, self._files_done
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = moved / elapsed
        pct = 100.0 * done / self.total_bytes if self.total_bytes else 100.0
        eta = human_duration((self.total_bytes - done) / rate) if rate > 0 else "unknown"
        return (
            f"{self.label}: {human_bytes(done)} of {human_bytes(self.total_bytes)} ({pct:.0f}%),"
            f" {files} of {self.total_files} files, {human_bytes(rate)}/s, ETA {eta}"
        )
