"""The download tests' model: a config, a few small json files and a 40 MiB LFS shard shaped like safetensors."""

from __future__ import annotations

import json
import random
import struct

SHARD = "model-00001-of-00001.safetensors"
SHARD_BYTES = 40 * 1024 * 1024


def safetensors_like(size: int, seed: int) -> bytes:
    """Exactly `size` bytes shaped like safetensors (header length, JSON header, raw bytes), random content."""
    header_len = 128
    body_len = size - 8 - header_len
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "weight": {"dtype": "U8", "shape": [body_len], "data_offsets": [0, body_len]},
        }
    )
    data = struct.pack("<Q", header_len) + header.ljust(header_len).encode() + random.Random(seed).randbytes(body_len)
    assert len(data) == size
    return data


def small_files() -> dict[str, bytes]:
    return {
        "config.json": json.dumps(
            {"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"]}
        ).encode(),
        "generation_config.json": json.dumps({"temperature": 0.6, "top_p": 0.9}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 131072}).encode(),
        "special_tokens_map.json": json.dumps({"eos_token": "<|eot_id|>"}).encode(),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": SHARD_BYTES}, "weight_map": {"weight": SHARD}}
        ).encode(),
    }
