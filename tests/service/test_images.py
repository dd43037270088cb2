"""Images as clients send them: camera JPEGs (EXIF orientation, MPO), 16-bit and transparent PNGs, and
base64 as common clients write it. Pixels are checked on the decoder itself; acceptance through the server."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from inference.images import decode_image
from tests.lab.chat import image_message, png_bytes
from tests.lab.server import API_KEY

MAX_PIXELS = 4_000_000
ORIENTATION = 0x0112
ROTATED_90_CLOCKWISE = 6


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def camera_jpeg() -> bytes:
    """40x20 as stored, with the EXIF tag that says 'turn me 90 degrees clockwise to view'."""
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90_CLOCKWISE
    return encoded(Image.new("RGB", (40, 20), (200, 30, 30)), "JPEG", exif=exif)


def sixteen_bit_gray_png(value: int) -> bytes:
    return encoded(Image.new("I;16", (8, 8), value), "PNG")


def transparent_png() -> bytes:
    return encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")


def transparent_gif() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    return encoded(image, "GIF", transparency=0)


def mpo() -> bytes:
    """What stereo and many phone cameras write: a JPEG with a second frame (Multi-Picture Object)."""
    first, second = Image.new("RGB", (32, 24), (30, 200, 30)), Image.new("RGB", (32, 24), (30, 30, 200))
    return encoded(first, "MPO", save_all=True, append_images=[second])


def test_exif_orientation_is_applied():
    image = decode_image(camera_jpeg(), MAX_PIXELS)
    assert image.size == (20, 40)


def test_sixteen_bit_gray_is_scaled_not_clipped():
    image = decode_image(sixteen_bit_gray_png(32768), MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("data", [transparent_png(), transparent_gif()], ids=["rgba png", "palette gif"])
def test_transparent_areas_become_white(data):
    assert decode_image(data, MAX_PIXELS).getpixel((0, 0)) == (255, 255, 255)


def test_mpo_camera_jpeg_is_read_as_its_first_frame():
    image = decode_image(mpo(), MAX_PIXELS)
    assert image.size == (32, 24)
    red, green, blue = image.getpixel((0, 0))
    assert green > 150 and red < 80 and blue < 80


def line_wrapped(data: bytes) -> str:
    return base64.encodebytes(data).decode()  # 76 characters a line, as MIME writes it


def url_safe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def awkward_png() -> bytes:
    """A PNG whose base64 has '+' or '/' (so URL-safe differs) and needs padding."""
    for width in range(60, 120):
        data = png_bytes(width, 48)
        text = base64.b64encode(data).decode()
        if ("+" in text or "/" in text) and text.endswith("="):
            return data
    raise AssertionError("no suitable test image")


@pytest.mark.parametrize("encode", [line_wrapped, url_safe, unpadded])
def test_base64_as_common_clients_write_it_is_accepted(server, encode):
    url = f"data:image/png;base64,{encode(awkward_png())}"
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "tiny-mllama", "messages": [image_message("What?", url)], "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "data",
    [camera_jpeg(), sixteen_bit_gray_png(1000), transparent_png(), mpo()],
    ids=["exif jpeg", "16-bit png", "transparent png", "mpo"],
)
def test_camera_and_editor_images_are_answered(server, data):
    mime = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "tiny-mllama", "messages": [image_message("What?", url)], "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PCX", "TGA"])
def test_formats_pillow_could_read_but_the_service_does_not_support_are_refused(fmt):
    from inference.errors import APIError

    with pytest.raises(APIError) as refused:
        decode_image(encoded(Image.new("RGB", (16, 16), (1, 2, 3)), fmt), MAX_PIXELS)
    assert refused.value.status == 400
