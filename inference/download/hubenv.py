"""Endpoint, token and the huggingface_hub settings that must be in place before it is used.

huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET and its timeouts into
`huggingface_hub.constants` when it is first imported. `load_hub()` therefore sets the
environment first and then also writes the values into `constants`, which is correct
whether or not something in this process imported huggingface_hub earlier.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from inference.download.errors import UsageError

OFFICIAL_ENDPOINT = "https://huggingface.co"
OFFICIAL_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    timeout: float
    token: str | None = field(default=None, repr=False)

    @property
    def official(self) -> bool:
        return (urlsplit(self.endpoint).hostname or "").lower() in OFFICIAL_HOSTS

    @property
    def shown_endpoint(self) -> str:
        """The endpoint without any user:password part, for messages and the marker."""
        return without_credentials(self.endpoint)

    @property
    def secrets(self) -> list[str]:
        """What must never be printed or written: the token and the endpoint's credentials."""
        return ([self.token] if self.token else []) + endpoint_credentials(self.endpoint)


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint_credentials(url: str) -> list[str]:
    """The user:password part of an endpoint URL, as written and URL-decoded, and its password alone."""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" not in authority:
        return []
    userinfo = authority.rsplit("@", 1)[0]
    password = userinfo.partition(":")[2]
    forms = {userinfo, unquote(userinfo)}
    if len(password) >= 4:  # shorter ones would mask unrelated text; they appear only with the user name
        forms |= {password, unquote(password)}
    return sorted(forms, key=len, reverse=True)


def resolve_endpoint(flag: str | None, environ: dict[str, str] | os._Environ = os.environ) -> str:
    value = (flag or environ.get("HF_ENDPOINT") or OFFICIAL_ENDPOINT).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = value
        for secret in endpoint_credentials(value):
            shown = shown.replace(secret, "***")
        raise UsageError(f"endpoint must be an http(s) URL such as https://hf-mirror.com, got {shown!r}")
    return value


def read_token(
    token_file: str | None, environ: dict[str, str] | os._Environ = os.environ
) -> tuple[str | None, list[str]]:
    """The token from --token-file, else HF_TOKEN, else none; plus warnings about the file."""
    warnings: list[str] = []
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except OSError as exc:
            raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"the token file {path} is empty")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(f"the token file {path} can be read by other users (chmod 600 it)")
        return token, warnings
    return (environ.get("HF_TOKEN") or "").strip() or None, warnings


def load_hub(settings: HubSettings):
    """Import huggingface_hub configured for `settings`; return the module."""
    os.environ["HF_ENDPOINT"] = settings.endpoint
    if not settings.official:
        # Xet-stored files would otherwise be fetched from Xet's CAS, bypassing the mirror.
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] = str(int(settings.timeout))
    os.environ["HF_HUB_ETAG_TIMEOUT"] = str(int(settings.timeout))

    import httpx
    import huggingface_hub
    from huggingface_hub import constants

    constants.ENDPOINT = settings.endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = settings.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    host = (urlsplit(settings.endpoint).hostname or "").lower()
    constants.HF_URL_HOSTS = frozenset(constants.HF_URL_HOSTS | {host})
    if not settings.official:
        constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_DOWNLOAD_TIMEOUT = int(settings.timeout)
    constants.HF_HUB_ETAG_TIMEOUT = int(settings.timeout)

    timeout = httpx.Timeout(settings.timeout)

    def bound_timeouts(request: httpx.Request) -> None:
        # Some HfApi calls (list_repo_tree, repo_info without timeout=) pass timeout=None, which
        # lets a stalled server hang the call forever: give every request a bound.
        current = request.extensions.get("timeout") or {}
        if not current or any(value is None for value in current.values()):
            request.extensions["timeout"] = timeout.as_dict()

    def client_factory() -> httpx.Client:
        return httpx.Client(follow_redirects=True, timeout=timeout, event_hooks={"request": [bound_timeouts]})

    huggingface_hub.set_client_factory(client_factory)
    return huggingface_hub
