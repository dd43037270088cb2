"""What the benchmark sends: images (generated, or the user's own) and prompts, paired per request.

Generated images are photo-like (gradients, shapes, text lines), drawn with Pillow from a seed, so
two runs with the same seed send byte-identical requests. The default size, 1120×1120, is four
560×560 tiles: the most a Llama 3.2 Vision image costs. A folder of the user's images is sent as
the files are, without re-encoding, so the request sizes are the real ones.
"""

from __future__ import annotations

import base64
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, UnidentifiedImageError

# Eleven everyday questions about images, one per use case the reference manual deployment was judged on.
DEFAULT_PROMPTS = (
    "What's the problem? What should be good numbers?",
    "What dog breed is this? One paragraph and 3-5 bullet points.",
    "What kind of plant is this?",
    "What's the total charge in the receipt?",
    "I am on a diet. Which drink should I drink?",
    "Summarize the flow and return a python script.",
    "Convert the chart to an HTML table.",
    "What's in the fridge? Give 2 dishes.",
    "Check each answer, mark correct or incorrect, and give a total score.",
    "Where is this place?",
    "Describe the fireplace and list all objects.",
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}


class WorkloadError(ValueError):
    """The workload cannot be built (bad size, empty or unreadable folder)."""


@dataclass(frozen=True)
class BenchImage:
    name: str
    url: str  # a data: URI, sent as the image_url part
    width: int
    height: int
    size_bytes: int  # the encoded file, before base64


@dataclass(frozen=True)
class BenchRequest:
    index: int
    image: BenchImage
    prompt: str

    def messages(self) -> list[dict]:
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": self.image.url}},
                    {"type": "text", "text": self.prompt},
                ],
            }
        ]


@dataclass(frozen=True)
class Workload:
    images: tuple[BenchImage, ...]
    prompts: tuple[str, ...]
    source: str  # "generated" or the folder

    def request(self, index: int) -> BenchRequest:
        """Request number `index` of a level: the same index gets the same image and prompt at every level."""
        return BenchRequest(index, self.images[index % len(self.images)], self.prompts[index % len(self.prompts)])

    def describe(self) -> dict:
        return {
            "source": self.source,
            "images": [
                {"name": i.name, "width": i.width, "height": i.height, "bytes": i.size_bytes} for i in self.images
            ],
            "prompts": list(self.prompts),
        }


def parse_size(text: str) -> tuple[int, int]:
    """'1120x1120' -> (1120, 1120)."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text)
    if not match or not all(0 < int(n) <= 16384 for n in match.groups()):
        raise WorkloadError(f"image size {text!r} is not WIDTHxHEIGHT with sides from 1 to 16384, e.g. 1120x1120")
    return int(match.group(1)), int(match.group(2))


def generated_images(count: int, width: int, height: int, seed: int) -> list[BenchImage]:
    """`count` distinct photo-like JPEGs, the same bytes for the same arguments."""
    return [
        _encode(f"generated-{n}.jpg", _draw(width, height, random.Random(f"{seed}:{n}")), "JPEG") for n in range(count)
    ]


def folder_images(folder: Path) -> list[BenchImage]:
    """Every image file directly in `folder`, by name, sent as stored."""
    if not folder.is_dir():
        raise WorkloadError(f"{folder} is not a folder")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height, fmt = image.width, image.height, image.format
        except (UnidentifiedImageError, OSError) as exc:
            raise WorkloadError(f"{path} is not a readable image: {exc}") from None
        mime = MIME_BY_FORMAT.get(fmt or "")
        if mime is None:
            raise WorkloadError(f"{path} is a {fmt} image; send JPEG, PNG, WebP, GIF or BMP")
        images.append(BenchImage(path.name, _data_uri(data, mime), width, height, len(data)))
    if not images:
        raise WorkloadError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return images


def build(
    image_dir: Path | None, image_count: int, image_size: tuple[int, int], prompts: list[str] | None, seed: int
) -> Workload:
    if image_dir is not None:
        images, source = folder_images(image_dir), str(image_dir)
    else:
        images, source = generated_images(image_count, *image_size, seed=seed), "generated"
    chosen = tuple(prompts) if prompts else DEFAULT_PROMPTS
    if any(not prompt.strip() for prompt in chosen):
        raise WorkloadError("a prompt is empty")
    return Workload(tuple(images), chosen, source)


def _draw(width: int, height: int, rng: random.Random) -> Image.Image:
    # A smooth two-colour background, then shapes and lines of "text": compresses like a photo of a
    # scene or a document would, unlike noise (far larger) or a flat colour (far smaller).
    top, bottom = _colour(rng), _colour(rng)
    gradient = Image.linear_gradient("L").resize((width, height)).rotate(rng.choice((0, 90, 180, 270)))
    image = Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), gradient)
    draw = ImageDraw.Draw(image)
    unit = max(1, min(width, height) // 20)
    for _ in range(24):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randint(unit, unit * 6), rng.randint(unit, unit * 6)
        box = (x, y, x + w, y + h)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=_colour(rng), outline=_colour(rng), width=max(1, unit // 8))
        else:
            draw.rectangle(box, fill=_colour(rng))
    words = ("TOTAL", "TAX", "12.99", "PSI", "33", "kcal", "130", "MILK", "7UP", "SCORE", "12/12", "SF")
    line_height = max(8, unit // 2)
    for row in range(rng.randint(6, 14)):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        draw.text((unit, unit + row * line_height * 2), text, fill=_colour(rng), font_size=line_height)
    return image


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _encode(name: str, image: Image.Image, fmt: str) -> BenchImage:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    data = buffer.getvalue()
    return BenchImage(name, _data_uri(data, MIME_BY_FORMAT[fmt]), image.width, image.height, len(data))


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
