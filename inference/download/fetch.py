"""Fetching one file: resumable, verified before it takes its place in the folder.

Bytes go to DIR/.cache/vlmkit/partial/<content hash>.part, opened for append. Each attempt
asks huggingface_hub's `http_get` to continue from the partial file's size with a
`Range: bytes=N-` request; a server that honours Range sends the rest, one that ignores it
(olah) sends the whole file, which http_get detects (200 instead of 206) and writes from
byte 0. The partial file outlives a failed attempt and a killed process, unlike
huggingface_hub's own `.incomplete` files, which are unique per call and deleted on error.
The finished file is hashed against the repo metadata and only then renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from inference import __version__
from inference.download.errors import VerificationFailed
from inference.download.hubenv import HubSettings
from inference.download.paths import inside
from inference.download.progress import Progress
from inference.download.remote import RemoteFile
from inference.download.retry import Retry
from inference.download.state import FolderState
from inference.download.verify import mismatch


class Fetcher:
    def __init__(
        self,
        *,
        hub,
        repo: str,
        sha: str,
        settings: HubSettings,
        use_xet: bool,
        state: FolderState,
        retry: Retry,
        warn: Callable[[str], None],
    ) -> None:
        self.hub = hub
        self.repo = repo
        self.sha = sha
        self.endpoint = settings.endpoint
        self.shown_endpoint = settings.shown_endpoint
        self._token = settings.token
        self.use_xet = use_xet
        self.state = state
        self.retry = retry
        self.warn = warn

    def fetch(self, remote: RemoteFile, progress: Progress) -> None:
        """Put a verified copy of `remote` at its path in the folder."""
        destination = inside(self.state.local_dir, remote.path)
        for attempt in (1, 2):
            if self.use_xet and remote.xet_hash:
                self._fetch_with_xet(remote, progress)
                staged = destination
            else:
                staged = self.state.partial_path(remote)
                self.retry.run(
                    f"download {remote.path}",
                    lambda: self._transfer(remote, staged, progress),
                    progress=lambda: _size(staged),
                )
            problem = mismatch(staged, remote)
            if problem is None:
                break
            staged.unlink(missing_ok=True)
            progress.set(remote.path, 0)
            if attempt == 2:
                raise VerificationFailed(
                    f"{remote.path} from {self.shown_endpoint} does not match the repo metadata twice in a row "
                    f"({problem}): the mirror serves different content than the repo lists"
                )
            self.warn(f"{remote.path}: downloaded content does not match ({problem}); fetching it again")
        if staged != destination:
            destination = inside(self.state.local_dir, remote.path)  # again: the fetch took time
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, destination)
        self.state.record(remote)
        progress.set(remote.path, remote.size)
        progress.file_done()

    def _transfer(self, remote: RemoteFile, partial: Path, progress: Progress) -> None:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        partial.parent.mkdir(parents=True, exist_ok=True)
        if _size(partial) > remote.size:
            partial.unlink()
        headers = build_hf_headers(token=self._token or False, library_name="vlmkit", library_version=__version__)
        headers["Accept-Encoding"] = "identity"  # byte ranges must count bytes of the file itself
        url = self.hub.hf_hub_url(self.repo, remote.path, revision=self.sha, endpoint=self.endpoint)
        with open(partial, "ab") as handle:
            resume = handle.tell()
            progress.set(remote.path, resume)
            http_get(
                url,
                handle,
                resume_size=resume,
                headers=headers,
                expected_size=remote.size,
                displayed_filename=remote.path,
                tqdm_class=progress.hook(remote.path),
            )

    def _fetch_with_xet(self, remote: RemoteFile, progress: Progress) -> None:
        # Official hub only: Xet transfers resume from its chunk cache on their own.
        self.retry.run(
            f"download {remote.path}",
            lambda: self.hub.hf_hub_download(
                self.repo,
                remote.path,
                revision=self.sha,
                local_dir=self.state.local_dir,
                endpoint=self.endpoint,
                token=self._token or False,
                force_download=(self.state.local_dir / remote.path).exists(),
                tqdm_class=progress.hook(remote.path),
            ),
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
