"""Inspect a repo on the Hub (or the mirror HF_ENDPOINT names) without downloading weights.

Fetches config.json, then the safetensors headers with HTTP range requests (huggingface_hub's
`get_safetensors_metadata`: the index plus the first bytes of each shard). When the shards cannot
be read but the index can, falls back to the index; with neither, to config.json alone.
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import urlsplit

from inference.planner.checkpoint import (
    INDEX_FILE,
    Checkpoint,
    CheckpointError,
    from_config,
    from_index,
    tensors_from_header_maps,
)


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def inspect_repo(repo_id: str, revision: str | None = None) -> Checkpoint:
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        NotASafetensorsRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    url = endpoint()
    _check_reachable(url)
    api = HfApi(endpoint=url)
    try:
        config = _download_json(api, repo_id, "config.json", revision)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such repo at {url} (nor a local folder of that name)") from None
    except RemoteEntryNotFoundError:
        raise CheckpointError(f"{repo_id} has no config.json at {url}") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"cannot reach {url} for {repo_id}/config.json and it is not in the local cache "
            "(set HF_ENDPOINT to a reachable mirror, or give a local checkpoint folder)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError, httpx.HTTPError) as exc:
        raise CheckpointError(f"cannot fetch {repo_id}/config.json from {url}: {_reason(exc)}") from None

    try:
        meta = api.get_safetensors_metadata(repo_id, revision=revision)
    except NotASafetensorsRepoError:
        return from_config(repo_id, config, f"config.json from {url} (no {INDEX_FILE} or model.safetensors there)")
    except Exception as exc:  # noqa: BLE001 - any failure reading shard headers falls back to the index or config
        return _index_or_config(api, repo_id, revision, config, url, _reason(exc))

    headers = {
        name: (info.dtype, info.shape, info.data_offsets[1] - info.data_offsets[0])
        for file in meta.files_metadata.values()
        for name, info in file.tensors.items()
    }
    total = (meta.metadata or {}).get("total_size")
    shards = len(meta.files_metadata)
    detail = f"safetensors headers of {shards} {'file' if shards == 1 else 'shards'}, read from {url} by range requests"
    return Checkpoint(
        repo_id, config, tensors_from_header_maps(headers), "headers", detail, int(total) if total else None
    )


_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing answers at the endpoint, instead of after huggingface_hub's retries (~20 s).

    Skipped offline (the cache may answer) and behind a proxy (only the proxy can tell).
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise CheckpointError(
            f"cannot reach {url} ({exc.strerror or exc}); set HF_ENDPOINT to a reachable mirror, "
            "or give a local checkpoint folder"
        ) from None


def _index_or_config(api, repo_id, revision, config, url, why) -> Checkpoint:
    try:
        index = _download_json(api, repo_id, INDEX_FILE, revision)
    except Exception:  # noqa: BLE001 - no readable index: config.json is all there is
        return from_config(repo_id, config, f"config.json from {url} (shard headers unreadable: {why})")
    return from_index(repo_id, config, index, f"{INDEX_FILE} from {url} (shard headers unreadable: {why})")


def _download_json(api, repo_id: str, filename: str, revision: str | None) -> dict:
    path = api.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
    with open(path) as f:
        return json.load(f)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))
