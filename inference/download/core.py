"""One download run: check what is already there, plan, preflight, fetch, verify, mark complete."""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from inference.download.errors import DownloadError, Interrupted, NotEnoughSpace, TransientError, classify
from inference.download.fetch import Fetcher
from inference.download.hubenv import HubSettings, load_hub
from inference.download.paths import inside
from inference.download.progress import Cancelled, Progress, human_bytes
from inference.download.remote import RemoteFile, is_commit_sha, list_files, resolve_revision
from inference.download.retry import Retry
from inference.download.state import FolderState
from inference.download.verify import mismatch


@dataclass
class Options:
    repo: str
    local_dir: Path
    revision: str = "main"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    verify: bool = False
    max_workers: int = 4
    retries: int = 8
    retry_time: float = 600.0
    reserve: int = 1 << 30
    progress_interval: float = 30.0
    bar: bool = False


@dataclass
class Result:
    status: str  # "downloaded" | "unchanged" | "repaired"
    repo: str
    revision: str
    sha: str
    local_dir: str
    files: int
    bytes: int
    fetched: list[str]
    repaired: list[str]
    verified_at: str
    elapsed_s: float


class Console:
    """Human lines, with the secrets (token, endpoint credentials) masked out of everything printed."""

    def __init__(self, out, err, secrets: list[str]) -> None:
        self.out, self.err, self._secrets = out, err, secrets

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def info(self, text: str) -> None:
        print(self.redact(text), file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print("warning: " + self.redact(text), file=self.err, flush=True)


def run_download(opts: Options, settings: HubSettings, console: Console) -> Result:
    started = time.monotonic()
    hub = load_hub(settings)
    _route_hub_logging(console)
    api = hub.HfApi(endpoint=settings.endpoint, token=settings.token or False, library_name="vlmkit")
    state = FolderState(opts.local_dir)
    endpoint = settings.shown_endpoint
    retry = Retry(
        attempts=opts.retries + 1,
        max_time=opts.retry_time,
        repo=opts.repo,
        endpoint=endpoint,
        warn=console.warn,
    )
    if settings.token and not settings.official:
        console.info(f"note: the token is sent to {endpoint}, a mirror: its operator can read it")

    with state.exclusive(lambda: console.info(f"waiting for another vlmkit download into {opts.local_dir}")):
        marker = state.marker()
        if marker and not opts.verify:
            unchanged = _unchanged(opts, settings, api, state, marker, console)
            if unchanged:
                return _result("unchanged", opts, marker, [], [], started)

        sha = retry.run("resolve revision", lambda: resolve_revision(api, opts.repo, opts.revision, settings.timeout))
        listing = retry.run("list files", lambda: list_files(api, opts.repo, sha))
        wanted = _filter(listing, opts.include, opts.exclude)
        if not wanted:
            raise DownloadError(f"no file of {opts.repo}@{sha[:12]} matches the --include/--exclude patterns")
        console.info(
            f"{opts.repo}@{opts.revision} is {sha}: {len(wanted)} files, {human_bytes(sum(f.size for f in wanted))}"
            f" from {endpoint}"
        )

        missing, broken = _check_local(wanted, state, opts, console)
        to_fetch = missing + broken
        already = {f.path: state.partial_size(f) for f in to_fetch}
        needed = sum(f.size - already[f.path] for f in to_fetch)
        if to_fetch:
            check_free_space(opts.local_dir, needed, opts.reserve)
            state.remove_marker()
            _fetch_all(opts, settings, hub, sha, state, retry, console, to_fetch, already)

        marker = {
            "repo": opts.repo,
            "revision": opts.revision,
            "sha": sha,
            "endpoint": endpoint,
            "include": sorted(opts.include),
            "exclude": sorted(opts.exclude),
            "bytes": sum(f.size for f in wanted),
            "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": f.path, **state.records[f.path]} for f in wanted],
        }
        state.write_marker(marker)
        state.drop_stale_partials(keep=set())
        status = "repaired" if broken else "downloaded" if missing else "unchanged"
        return _result(status, opts, marker, [f.path for f in to_fetch], [f.path for f in broken], started)


def _unchanged(opts, settings, api, state: FolderState, marker: dict, console: Console) -> bool:
    """True when the marker still describes this folder at the revision asked for."""
    if (
        marker.get("repo") != opts.repo
        or marker.get("include") != sorted(opts.include)
        or marker.get("exclude") != sorted(opts.exclude)
        or not state.marker_still_holds(marker)
    ):
        return False
    if is_commit_sha(opts.revision):
        return opts.revision.lower() == marker.get("sha")
    try:  # one quick look: has the branch or tag moved?
        sha = resolve_revision(api, opts.repo, opts.revision, min(settings.timeout, 10.0))
    except Exception as exc:  # noqa: BLE001 - only a transient failure is tolerated here
        outcome = classify(exc, repo=opts.repo, endpoint=settings.shown_endpoint)
        if isinstance(outcome, TransientError) and marker.get("revision") == opts.revision:
            console.warn(
                f"cannot reach {settings.shown_endpoint} to check whether {opts.revision!r} moved ({outcome}); "
                f"the folder is complete at {marker['sha'][:12]}"
            )
            return True
        raise outcome from exc
    return sha == marker.get("sha")


def _filter(files: list[RemoteFile], include: list[str], exclude: list[str]) -> list[RemoteFile]:
    from huggingface_hub.utils import filter_repo_objects

    return list(
        filter_repo_objects(
            files, allow_patterns=include or None, ignore_patterns=exclude or None, key=lambda f: f.path
        )
    )


def _check_local(wanted, state: FolderState, opts: Options, console: Console):
    """Split `wanted` into files absent from disk and files present but wrong; record good ones."""
    missing, suspect = [], []
    for remote in wanted:
        path = inside(opts.local_dir, remote.path)  # every file is checked before the first write
        if not path.is_file():
            missing.append(remote)
        elif opts.verify or not state.trusted(remote):
            suspect.append(remote)
    broken = []
    if suspect:
        total = sum(f.size for f in suspect)
        with Progress(
            "verify",
            total,
            len(suspect),
            stream=console.err,
            bar=opts.bar,
            interval=opts.progress_interval,
            emit=console.info,
        ) as progress:

            def check(remote: RemoteFile) -> tuple[RemoteFile, str | None]:
                problem = mismatch(opts.local_dir / remote.path, remote, lambda n: progress.add(remote.path, n))
                progress.file_done()
                return remote, problem

            with ThreadPoolExecutor(max_workers=max(1, min(opts.max_workers, os.cpu_count() or 1))) as pool:
                for remote, problem in pool.map(check, suspect):
                    if problem is None:
                        state.record(remote)
                    else:
                        console.info(f"{remote.path} is broken ({problem}): fetching it again")
                        state.remove_marker()  # the folder is no longer complete
                        state.forget(remote.path)
                        inside(opts.local_dir, remote.path).unlink()
                        broken.append(remote)
    return missing, broken


def check_free_space(target: Path, needed: int, reserve: int) -> None:
    """Refuse to start when `target`'s file system cannot hold `needed` bytes plus `reserve`."""
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + reserve:
        raise NotEnoughSpace(
            f"not enough disk space at {target}: need {human_bytes(needed + reserve)} "
            f"({human_bytes(needed)} to download + {human_bytes(reserve)} reserve), "
            f"{human_bytes(free)} free on the file system of {probe}"
        )


def _fetch_all(opts, settings, hub, sha, state, retry, console, to_fetch, already) -> None:
    fetcher = Fetcher(
        hub=hub,
        repo=opts.repo,
        sha=sha,
        settings=settings,
        use_xet=settings.official and not hub.constants.HF_HUB_DISABLE_XET,
        state=state,
        retry=retry,
        warn=console.warn,
    )
    total = sum(f.size for f in to_fetch)
    resumed = sum(already.values())
    if resumed:
        console.info(f"resuming: {human_bytes(resumed)} already on disk from an earlier run")
    with Progress(
        "download",
        total,
        len(to_fetch),
        stream=console.err,
        bar=opts.bar,
        interval=opts.progress_interval,
        emit=console.info,
    ) as progress:
        progress.cancel = retry.cancel  # one event stops transfers mid-file and retries mid-wait
        for path, n in already.items():
            progress.set(path, n)
        pool = ThreadPoolExecutor(max_workers=max(1, opts.max_workers))
        futures = [pool.submit(fetcher.fetch, remote, progress) for remote in to_fetch]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            progress.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise Interrupted("interrupted: the partial files are kept and the next run resumes them") from None
        failed = [f for f in done if f.exception() is not None]
        if failed:
            progress.cancel.set()  # stops the other transfers at their next chunk
        pool.shutdown(wait=True, cancel_futures=True)
        if failed:
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            raise first if isinstance(first, DownloadError) else DownloadError(f"{type(first).__name__}: {first}")


def _result(status, opts: Options, marker: dict, fetched, repaired, started) -> Result:
    return Result(
        status=status,
        repo=opts.repo,
        revision=opts.revision,
        sha=marker["sha"],
        local_dir=str(opts.local_dir),
        files=len(marker["files"]),
        bytes=marker["bytes"],
        fetched=fetched,
        repaired=repaired,
        verified_at=marker["verified_at"],
        elapsed_s=round(time.monotonic() - started, 2),
    )


def _route_hub_logging(console: Console) -> None:
    """Send huggingface_hub's warnings through the console, so they are redacted too."""
    import logging

    class _ToConsole(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.warn(record.getMessage().replace("\n", " "))

    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.handlers = [_ToConsole(level=logging.WARNING)]
    hub_logger.propagate = False


def default_bar() -> bool:
    return sys.stderr.isatty()
