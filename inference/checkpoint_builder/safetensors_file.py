"""The safetensors format as the builder writes it: the entries of a file, its header, shard names."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.uint8: "U8"}
SAFETENSORS_ITEM_SIZES = {"F32": 4, "BF16": 2, "U8": 1}


@dataclass(frozen=True)
class StoredTensor:
    """One entry of a safetensors file."""

    name: str
    dtype: str  # safetensors' name: "F32", "BF16", "U8"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_ITEM_SIZES[self.dtype]


def safetensors_header(entries: list[StoredTensor], length: int | None = None) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 or to `length` bytes."""
    header_entries: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        end = offset + entry.nbytes
        header_entries[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    header = json.dumps(header_entries, separators=(",", ":")).encode()
    padded_length = len(header) + (-len(header) % 8) if length is None else length - 8
    if padded_length < len(header):
        raise RuntimeError(f"the safetensors header needs {len(header)} bytes, more than the {padded_length} reserved")
    header += b" " * (padded_length - len(header))
    return struct.pack("<Q", len(header)) + header


def shard_file_names(shard_count: int) -> list[str]:
    if shard_count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{shard_count:05d}.safetensors" for i in range(1, shard_count + 1)]
