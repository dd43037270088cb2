"""Turn an image URL from a request into a checked RGB image.

Sources: data: URIs always (base64 as clients write it: line-wrapped, URL-safe or unpadded too);
file:// only for regular files under a configured folder; http(s) only when enabled (remote_images.py).
Only the supported formats are parsed at all; pixel counts are checked from the header, before the
image is decoded. The image is turned upright (EXIF orientation), 16-bit samples are scaled rather than
clipped, and transparent areas become white.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import APIError, invalid_request
from inference.remote_images import fetch_remote_image

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow opens nothing else
# Camera JPEGs with a second (preview or stereo) frame open as MPO through the JPEG plugin.
_READ_AS_JPEG = ("MPO",)
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class ImagePolicy:
    max_pixels: int
    max_bytes: int
    allow_remote: bool = False
    remote_timeout_s: float = 10.0
    local_dir: Path | None = None


def load_image(url: str, policy: ImagePolicy) -> Image.Image:
    """Fetch or decode the image behind `url`; raise a 400 APIError for anything unusable."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        raise invalid_request("image_url is not a valid URL", code="unsupported_image_url") from None
    if scheme == "data":
        data = _decode_data_uri(url)
    elif scheme == "file":
        data = _read_local_file(url, policy)
    elif scheme in ("http", "https"):
        if not policy.allow_remote:
            raise invalid_request(
                "http(s) image URLs are disabled on this server; send a data: URI", code="unsupported_image_url"
            )
        data = fetch_remote_image(url, policy.max_bytes, policy.remote_timeout_s)
    else:
        raise invalid_request(
            f"image_url scheme {scheme or '(none)'!r} is not supported; send a data:image/...;base64 URI",
            code="unsupported_image_url",
        )
    return decode_image(data, policy.max_pixels)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """An upright RGB image; any failure to read it is the client's (400), never a 500."""
    try:
        return _decode(data, max_pixels)
    except APIError:
        raise
    except Exception:  # noqa: BLE001 - Pillow's plugins raise many kinds of errors on hostile files
        log.warning("an image could not be decoded", exc_info=True)
        raise invalid_request(
            "the image could not be read: it is corrupt or uses an unsupported variant", code="invalid_image"
        ) from None


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise invalid_request(
            f"the image could not be read: not a {', '.join(SUPPORTED_FORMATS)} image, or corrupt", code="invalid_image"
        ) from None
    if image.format not in SUPPORTED_FORMATS + _READ_AS_JPEG:
        raise invalid_request(
            f"image format {image.format} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}",
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
    return _to_rgb(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """Turned as its EXIF orientation says; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - EXIF is metadata: its faults must not lose the picture
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the model sees the picture: transparent areas on white, 16-bit samples scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale (PNG, TIFF-like BMPs)
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> APIError:
    shown = f"{size[0]}x{size[1]} " if size else ""
    return invalid_request(f"the image {shown}has more than the {max_pixels} pixels allowed", code="image_too_large")


def _decode_data_uri(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
        raise invalid_request("image data URIs must look like data:image/<format>;base64,<data>", code="invalid_image")
    payload = urllib.parse.unquote(payload).translate(_BASE64_WHITESPACE).translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request("the image data URI is not valid base64", code="invalid_image") from None


def _read_local_file(url: str, policy: ImagePolicy) -> bytes:
    if policy.local_dir is None:
        raise invalid_request("file:// image URLs are disabled on this server", code="unsupported_image_url")
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if "\x00" in name:
        raise invalid_request("file:// image URLs must not contain NUL bytes", code="unsupported_image_url")
    try:
        path = Path(name).resolve()
    except (OSError, RuntimeError):  # a name too long, a symlink loop
        raise invalid_request(f"no readable image at {url}", code="invalid_image") from None
    root = policy.local_dir.resolve()
    if not path.is_relative_to(root):
        raise invalid_request(
            "file:// image URLs must name a file under the server's image folder", code="unsupported_image_url"
        )
    try:
        # Non-blocking, so that a FIFO cannot hold the request; only regular files are read.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise invalid_request(f"no readable image at {url}", code="invalid_image") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise invalid_request("file:// image URLs must name a regular file", code="invalid_image")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(policy.max_bytes + 1)
    except OSError:
        raise invalid_request(f"no readable image at {url}", code="invalid_image") from None
    finally:
        os.close(descriptor)
    if len(data) > policy.max_bytes:
        raise invalid_request("the image file is too large", code="image_too_large")
    return data
