"""Real-shape checkpoints without the weights: what transformers' own model holds, written as sparse files.

`model_tensors(config)` builds MllamaForConditionalGeneration on the meta device (no memory) and
lists its parameters under the names the Hub checkpoints use. `write_sparse_checkpoint` writes
them as real safetensors shards (valid headers, correct lengths) whose data regions are holes, plus
model.safetensors.index.json: a folder any safetensors reader accepts, costing a few KB of disk.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1}
_HUB_NAMES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_model.", "vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def model_tensors(config: dict, dtype: str = "BF16") -> dict[str, tuple[str, tuple[int, ...]]]:
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    cfg = MllamaConfig(**{k: v for k, v in config.items() if k not in ("quantization_config", "architectures")})
    with torch.device("meta"):
        model = MllamaForConditionalGeneration(cfg)
    return {_hub_name(name): (dtype, tuple(p.shape)) for name, p in model.named_parameters()}


def _hub_name(name: str) -> str:
    for new, old in _HUB_NAMES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return prod(shape) * _ITEMSIZE[dtype]


def write_sparse_checkpoint(
    folder: Path, config: dict, tensors: dict[str, tuple[str, tuple[int, ...]]], shards: int = 1
) -> int:
    """Write config.json and `shards` safetensors files (plus an index when sharded); return the data bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        chunk = names[i * per_shard : (i + 1) * per_shard]
        file = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in chunk:
            dtype, shape = tensors[name]
            size = nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)  # the data: a hole of the right length
        total += offset
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total
