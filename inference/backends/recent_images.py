"""Recently seen images by digest, so that a follow-up question about an image skips the work its first one did.

The chat API is stateless: every turn of a conversation about a picture sends the picture again, and every time
it would go through the image processor (17-58 ms of CPU for a 4-tile image, measured on this project's CI-like
machine) and through the vision encoder and projector (52.7 ms of the H200 for a 4-tile image, the same encoder
in the 11B and the 90B: docs/lab/speed.md). The digest is of the decoded pixels, so the same picture sent again
finds its work whether it came as a data URI, a file or a URL, in any file format that decodes to the same pixels.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from PIL import Image

Value = TypeVar("Value")


def image_digest(image: Image.Image) -> str | None:
    """A digest of an RGB image's size and pixels; None for other modes (the service hands the backend RGB only),
    whose bytes alone would not say what the image looks like (a palette image's colours are in its palette)."""
    if image.mode != "RGB":
        return None
    digest = hashlib.sha256(f"RGB {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class RecentlyUsed(Generic[Value]):
    """At most `capacity` values by key, the least recently used dropped first (capacity 0 keeps none); safe to
    use from any thread. `hits` and `misses` count the lookups."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be 0 or more")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._values: OrderedDict[str, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Value | None:
        with self._lock:
            value = self._values.get(key)
            if value is None:
                self.misses += 1
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: Value) -> None:
        with self._lock:
            if self.capacity == 0:
                return
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
