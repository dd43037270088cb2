"""What can go wrong in a download, as exceptions that carry the command's exit code.

`classify()` is the one place that turns an exception raised by huggingface_hub, httpx or the
file system into either a `DownloadError` (stop: tell the user) or a `TransientError` (worth
another attempt: resets, timeouts, 5xx, 429, a body cut short).
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # anything not listed below; the message says what
    USAGE = 2  # bad arguments, unreadable token file (argparse uses 2 as well)
    REPO_NOT_FOUND = 3
    UNAUTHORIZED = 4  # gated repo, invalid token, forbidden
    REVISION_NOT_FOUND = 5
    UNREACHABLE = 6  # endpoint unreachable or failing, after the retries
    NO_SPACE = 7
    VERIFICATION_FAILED = 8
    INTERRUPTED = 130


class DownloadError(Exception):
    """A failure the user must act on; `code` is the exit code, `kind` a stable name for --json."""

    code = ExitCode.FAILED
    kind = "failed"


class UsageError(DownloadError):
    code = ExitCode.USAGE
    kind = "usage"


class RepoNotFound(DownloadError):
    code = ExitCode.REPO_NOT_FOUND
    kind = "repo_not_found"


class Unauthorized(DownloadError):
    code = ExitCode.UNAUTHORIZED
    kind = "unauthorized"


class RevisionNotFound(DownloadError):
    code = ExitCode.REVISION_NOT_FOUND
    kind = "revision_not_found"


class Unreachable(DownloadError):
    code = ExitCode.UNREACHABLE
    kind = "unreachable"


class NotEnoughSpace(DownloadError):
    code = ExitCode.NO_SPACE
    kind = "no_space"


class VerificationFailed(DownloadError):
    code = ExitCode.VERIFICATION_FAILED
    kind = "verification_failed"


class Interrupted(DownloadError):
    code = ExitCode.INTERRUPTED
    kind = "interrupted"


class TransientError(Exception):
    """A failure that another attempt may not meet (the original exception is `__cause__`)."""


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def classify(exc: BaseException, *, repo: str, endpoint: str) -> DownloadError | TransientError:
    """Sort an exception into "stop with this message and code" or "try again"."""
    # Imported here: huggingface_hub must only be imported after the environment is set up.
    import httpx
    from huggingface_hub import errors as hf

    if isinstance(exc, (DownloadError, TransientError)):
        return exc
    if isinstance(exc, hf.GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return Unauthorized(
            f"{repo} is gated: accept its conditions on the hub with your account, then pass a token "
            f"of that account (--token-file or HF_TOKEN)"
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RevisionNotFound(f"revision not found in {repo}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return RepoNotFound(
            f"repository {repo} not found on {endpoint} (if it is private or gated, pass a token with access)"
        )
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            reason = exc.response.headers.get("X-Error-Message") or (
                "invalid or missing token" if status == 401 else "forbidden"
            )
            return Unauthorized(f"{endpoint} refused access to {repo} (HTTP {status}: {reason})")
        if status in RETRY_STATUS:
            return _transient(exc, f"HTTP {status} from {endpoint}")
        if status == 404:
            return DownloadError(f"{endpoint} answered 404 for a file listed in {repo}: {_first_line(exc)}")
        return DownloadError(f"HTTP {status} from {endpoint}: {_first_line(exc)}")
    if isinstance(exc, httpx.TransportError):  # connect/read errors, resets, timeouts, cut-short bodies
        return _transient(exc, f"{type(exc).__name__}: {exc or 'no detail'}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NotEnoughSpace(f"the disk filled up while downloading: {exc}")
        if exc.errno is None:  # huggingface_hub's "Consistency check failed": fewer bytes than announced
            return _transient(exc, _first_line(exc))
        return DownloadError(f"{type(exc).__name__}: {exc}")
    return DownloadError(f"{type(exc).__name__}: {exc}")


def _transient(exc: BaseException, message: str) -> TransientError:
    err = TransientError(message)
    err.__cause__ = exc
    return err


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
