"""Turn an image URL from a request into a checked RGB image.

Sources: data: URIs always; file:// only under a configured folder; http(s) only when enabled, and
never to loopback, private, link-local, multicast or reserved addresses (resolved first, re-checked
on every redirect). Pixel counts are checked from the header, before the image is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

from inference.errors import APIError, invalid_request

SUPPORTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImagePolicy:
    max_pixels: int
    max_bytes: int
    allow_remote: bool = False
    remote_timeout_s: float = 10.0
    local_dir: Path | None = None


def load_image(url: str, policy: ImagePolicy) -> Image.Image:
    """Fetch or decode the image behind `url`; raise a 400 APIError for anything unusable."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        data = _decode_data_uri(url)
    elif scheme == "file":
        data = _read_local_file(url, policy)
    elif scheme in ("http", "https"):
        data = _fetch_remote(url, policy)
    else:
        raise invalid_request(
            f"image_url scheme {scheme or '(none)'!r} is not supported; send a data:image/...;base64 URI",
            code="unsupported_image_url",
        )
    return decode_image(data, policy.max_pixels)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise invalid_request("the image could not be read: not an image, or corrupt", code="invalid_image") from None
    if image.format not in SUPPORTED_FORMATS:
        raise invalid_request(
            f"image format {image.format} is not supported; use one of {', '.join(sorted(SUPPORTED_FORMATS))}",
            code="unsupported_image_format",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(image.size, max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise _too_many_pixels(image.size, max_pixels) from None
    except (OSError, ValueError, SyntaxError):
        raise invalid_request("the image is truncated or corrupt", code="invalid_image") from None
    return image.convert("RGB")


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> APIError:
    shown = f"{size[0]}x{size[1]} " if size else ""
    return invalid_request(f"the image {shown}has more than the {max_pixels} pixels allowed", code="image_too_large")


def _decode_data_uri(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
        raise invalid_request("image data URIs must look like data:image/<format>;base64,<data>", code="invalid_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request("the image data URI is not valid base64", code="invalid_image") from None


def _read_local_file(url: str, policy: ImagePolicy) -> bytes:
    if policy.local_dir is None:
        raise invalid_request("file:// image URLs are disabled on this server", code="unsupported_image_url")
    path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).resolve()
    root = policy.local_dir.resolve()
    if not path.is_relative_to(root):
        raise invalid_request("file:// image URLs must name a file under the server's image folder",
                              code="unsupported_image_url")
    try:
        if path.stat().st_size > policy.max_bytes:
            raise invalid_request("the image file is too large", code="image_too_large")
        return path.read_bytes()
    except OSError:
        raise invalid_request(f"no readable image at {url}", code="invalid_image") from None


def _fetch_remote(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_remote:
        raise invalid_request("http(s) image URLs are disabled on this server; send a data: URI",
                              code="unsupported_image_url")
    with httpx.Client(timeout=policy.remote_timeout_s, follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            check_public_host(url)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise invalid_request(f"fetching the image failed with HTTP {response.status_code}",
                                              code="image_fetch_failed")
                    return _read_limited(response, policy.max_bytes)
            except httpx.HTTPError as exc:
                raise invalid_request(f"fetching the image failed: {type(exc).__name__}",
                                      code="image_fetch_failed") from None
    raise invalid_request("too many redirects while fetching the image", code="image_fetch_failed")


def _read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise invalid_request("the remote image is too large", code="image_too_large")
    return bytes(body)


def check_public_host(url: str) -> None:
    """Refuse URLs whose host is, or resolves to, anything but a public unicast address."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_request("image URLs must be http(s) with a host name", code="unsupported_image_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise invalid_request(f"the image host {parts.hostname!r} cannot be resolved", code="image_fetch_failed") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise invalid_request("image URLs may not point at loopback, private, link-local or reserved addresses",
                                  code="forbidden_image_url")
