"""A checkpoint's tensors as the planner sees them: name, dtype, shape, bytes.

Also reads a safetensors header without touching the data: the file starts with an 8-byte
little-endian length N, then N bytes of JSON mapping each tensor name to its dtype, shape and
data_offsets. Bytes are taken from the offsets, so they are exact whatever the dtype.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from inference.model_layout import published_name

# Bytes per element of safetensors dtypes (F4 and friends are sub-byte; offsets still give exact bytes).
_ITEMSIZE = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

# config.json's torch_dtype / dtype strings -> safetensors names
_CONFIG_DTYPES = {
    "bfloat16": "BF16",
    "float16": "F16",
    "half": "F16",
    "float32": "F32",
    "float": "F32",
    "float64": "F64",
}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    linear: bool = False  # an nn.Linear weight (what bitsandbytes quantizes); known only when derived from config


def itemsize(dtype: str) -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise ValueError(f"unknown tensor dtype {dtype!r}") from None


def dtype_from_config(config: dict) -> str:
    """The dtype the unquantized weights are stored in (bf16 when config.json does not say)."""
    for holder in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = holder.get(key)
            if isinstance(value, str) and value.replace("torch.", "") in _CONFIG_DTYPES:
                return _CONFIG_DTYPES[value.replace("torch.", "")]
    return "BF16"


def read_header(stream: BinaryIO, source: str = "safetensors file") -> dict:
    """The JSON header of a safetensors stream, read from its first 8 + N bytes."""
    prefix = stream.read(8)
    if len(prefix) != 8:
        raise ValueError(f"{source}: too short to be a safetensors file")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"{source}: header length {length} is not plausible; not a safetensors file?")
    raw = stream.read(length)
    if len(raw) != length:
        raise ValueError(f"{source}: header cut short ({len(raw)} of {length} bytes)")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{source}: header is not JSON ({exc})") from None


def tensors_from_header(header: dict) -> list[Tensor]:
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out.append(Tensor(canonical_name(name), info["dtype"], tuple(info["shape"]), int(end) - int(start)))
    return out


def read_safetensors_file(path: Path) -> list[Tensor]:
    with open(path, "rb") as stream:
        return tensors_from_header(read_header(stream, str(path)))


def canonical_name(name: str) -> str:
    """One naming for both checkpoint layouts (transformers >= 4.52 module paths, the Hub checkpoints'
    names), so grouping and skip lists work on either: the Hub's."""
    return published_name(name) or name
