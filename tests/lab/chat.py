"""The images and chat messages tests send to a server."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    """A small image with white stripes (so it is not one flat colour), encoded as `fmt`."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):
        for y in range(height):
            image.putpixel((x, y), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(question: str, url: str | None = None) -> dict:
    """A user message with one image (the default PNG unless `url` is given) and a question."""
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url or data_uri(png_bytes())}},
            {"type": "text", "text": question},
        ],
    }
