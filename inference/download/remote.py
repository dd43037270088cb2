"""What the repository holds at a revision: its commit sha and its files with sizes and hashes."""

from __future__ import annotations

from dataclasses import dataclass

from inference.download.errors import DownloadError, RepoNotFound, RevisionNotFound, classify
from inference.download.hubenv import without_credentials
from inference.download.paths import UnsafeListing, check_content_id, check_repo_path

COMMIT_SHA_LENGTH = 40


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str  # git blob sha1 of the file (of the LFS pointer for LFS files)
    sha256: str | None  # LFS files: sha256 of the content
    xet_hash: str | None = None

    @property
    def digest(self) -> tuple[str, str]:
        """(algorithm, hex) that the content must hash to: sha256 for LFS files, git's blob sha1 otherwise."""
        return ("sha256", self.sha256) if self.sha256 else ("git-sha1", self.blob_id)

    @property
    def content_id(self) -> str:
        return self.digest[1]


def is_commit_sha(revision: str) -> bool:
    return len(revision) == COMMIT_SHA_LENGTH and all(c in "0123456789abcdef" for c in revision.lower())


def resolve_revision(api, repo: str, revision: str, timeout: float) -> str:
    """The commit sha that `revision` (branch, tag, sha) points to."""
    try:
        info = api.model_info(repo, revision=revision, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - sorted below
        outcome = classify(exc, repo=repo, endpoint=without_credentials(api.endpoint))
        if isinstance(outcome, RevisionNotFound):
            raise RevisionNotFound(f"revision {revision!r} not found in {repo}") from exc
        if isinstance(outcome, RepoNotFound) and revision != "main" and _repo_exists(api, repo, timeout):
            # Some mirrors (olah) answer an unknown revision as an unknown repo.
            raise RevisionNotFound(f"revision {revision!r} not found in {repo}") from exc
        raise outcome from exc
    if not info.sha:
        raise DownloadError(f"{without_credentials(api.endpoint)} did not return a commit sha for {repo}@{revision}")
    return info.sha


def _repo_exists(api, repo: str, timeout: float) -> bool:
    for revision in (None, "main"):
        try:
            api.model_info(repo, revision=revision, timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not shown to exist"
            continue
    return False


def list_files(api, repo: str, sha: str) -> list[RemoteFile]:
    from huggingface_hub.hf_api import RepoFile

    files = []
    for entry in api.list_repo_tree(repo, revision=sha, recursive=True):
        if isinstance(entry, RepoFile):
            files.append(_checked(entry))
    return sorted(files, key=lambda f: f.path)


def _checked(entry) -> RemoteFile:
    """The listing's entry, refused unless its path is safe and its ids are hex of the right length."""
    check_repo_path(entry.path)
    size = entry.lfs.size if entry.lfs else entry.size
    if not isinstance(size, int) or size < 0:
        raise UnsafeListing(f"the server lists {entry.path!r} with an invalid size {size!r:.80}")
    return RemoteFile(
        path=entry.path,
        size=size,
        blob_id=check_content_id("git-sha1", entry.blob_id, entry.path),
        sha256=check_content_id("sha256", entry.lfs.sha256, entry.path) if entry.lfs else None,
        xet_hash=getattr(entry, "xet_hash", None),
    )
