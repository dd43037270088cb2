"""Fetch an http(s) image URL without letting it reach what it should not.

Each hop (redirects included, at most 3) is resolved once and every address checked: public unicast
only, an IPv4 address embedded in an IPv6 one (mapped, NAT64, 6to4, Teredo) checked as that IPv4
address, the deprecated forms (IPv4-compatible, site-local) refused. The connection then goes to the
checked address, with the Host header and TLS name (SNI and certificate) of the URL: there is no second
lookup that DNS rebinding could answer differently. One deadline covers the whole fetch; at most
FETCH_WORKERS fetches run at once, and waiting for one counts against the deadline.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable

import httpx

from inference.errors import APIError, invalid_request

FETCH_WORKERS = 4
MAX_REDIRECTS = 3

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]  # host, port -> IP address strings

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="image-fetch")


def system_resolver(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def is_public_address(address: Address) -> bool:
    """A public unicast address; an IPv6 form that carries an IPv4 address is judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or address in _IPV4_COMPATIBLE:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 addresses; Teredo's 2001::/32 is not global anyway."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def check_public_host(
    url: str, resolver: Resolver = system_resolver, address_allowed: Callable[[Address], bool] = is_public_address
) -> Address:
    """The address to connect to for `url`, once every address its host resolves to has passed the check."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise invalid_request("image_url is not a valid URL (host or port)", code="unsupported_image_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_request("image URLs must be http(s) with a host name", code="unsupported_image_url")
    if parts.username is not None or parts.password is not None:
        raise invalid_request("image URLs must not carry credentials", code="unsupported_image_url")
    try:
        addresses = [ipaddress.ip_address(address.split("%")[0]) for address in resolver(parts.hostname, port)]
    except (OSError, UnicodeError, ValueError):
        raise invalid_request(
            f"the image host {parts.hostname!r} cannot be resolved", code="image_fetch_failed"
        ) from None
    if not addresses:
        raise invalid_request(f"the image host {parts.hostname!r} cannot be resolved", code="image_fetch_failed")
    if not all(address_allowed(address) for address in addresses):
        raise invalid_request(
            "image URLs may not point at loopback, private, link-local or reserved addresses",
            code="forbidden_image_url",
        )
    return addresses[0]


def fetch_remote_image(
    url: str,
    max_bytes: int,
    timeout_s: float,
    resolver: Resolver = system_resolver,
    address_allowed: Callable[[Address], bool] = is_public_address,
) -> bytes:
    """The body behind `url`, or a 400 APIError; never longer than `timeout_s` in all."""
    deadline = time.monotonic() + timeout_s
    gave_up = threading.Event()
    future = _POOL.submit(_fetch, url, max_bytes, deadline, gave_up, resolver, address_allowed)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        gave_up.set()
        future.cancel()
        raise _too_slow(timeout_s) from None


def _fetch(
    url: str,
    max_bytes: int,
    deadline: float,
    gave_up: threading.Event,
    resolver: Resolver,
    address_allowed: Callable[[Address], bool],
) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        address = check_public_host(url, resolver, address_allowed)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or gave_up.is_set():
            raise _too_slow(None)
        parts = urllib.parse.urlsplit(url)
        pinned = _with_address(parts, address)
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        try:
            with (
                httpx.Client(timeout=remaining, follow_redirects=False, trust_env=False) as client,
                client.stream("GET", pinned, headers={"Host": parts.netloc}, extensions=extensions) as response,
            ):
                if response.is_redirect:
                    url = urllib.parse.urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise invalid_request(
                        f"fetching the image failed with HTTP {response.status_code}", code="image_fetch_failed"
                    )
                return _read_limited(response, max_bytes, deadline, gave_up)
        except httpx.TimeoutException:
            raise _too_slow(None) from None
        except httpx.HTTPError as exc:
            raise invalid_request(
                f"fetching the image failed: {type(exc).__name__}", code="image_fetch_failed"
            ) from None
    raise invalid_request("too many redirects while fetching the image", code="image_fetch_failed")


def _with_address(parts: urllib.parse.SplitResult, address: Address) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path or "/", parts.query, ""))


def _read_limited(response: httpx.Response, max_bytes: int, deadline: float, gave_up: threading.Event) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise invalid_request("the remote image is too large", code="image_too_large")
        if time.monotonic() > deadline or gave_up.is_set():
            raise _too_slow(None)
    return bytes(body)


def _too_slow(timeout_s: float | None) -> APIError:
    limit = f" ({timeout_s:g} s)" if timeout_s is not None else ""
    return invalid_request(f"fetching the image took longer than the server allows{limit}", code="image_fetch_failed")
