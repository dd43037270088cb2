"""What a checkpoint holds, read from a local folder without loading any weights.

In order of trust:
1. `headers`: the safetensors headers of every shard: each tensor's dtype, shape and exact bytes.
2. `index`: model.safetensors.index.json without the shards: the tensor names (which say what is
   quantized and how) sized from config.json, and metadata.total_size as the byte total.
3. `config`: config.json alone: the tensor list derived from the architecture and, for a
   bitsandbytes checkpoint, from the quantization rules (inference/planner/quantization.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from inference.planner.mllama import MllamaDims, dense_tensors
from inference.planner.quantization import Quantization
from inference.planner.tensors import Tensor, canonical_name, read_safetensors_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(Exception):
    """The model cannot be inspected (missing config, unreadable headers, unreachable mirror)."""


@dataclass
class Checkpoint:
    name: str
    config: dict
    tensors: list[Tensor]
    source: str  # "headers", "index" or "config"
    detail: str
    index_total: int | None = None  # metadata.total_size of the index, when one was read

    @property
    def dims(self) -> MllamaDims:
        return MllamaDims.from_config(self.config)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def inspect_folder(folder: Path, name: str | None = None) -> Checkpoint:
    folder = Path(folder)
    config = _read_json(folder / "config.json", "config.json")
    label = name or str(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = _read_json(index_path, INDEX_FILE)
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if shards and not missing:
            return from_headers(label, config, {s: folder / s for s in shards}, index)
        return from_index(
            label, config, index, f"{INDEX_FILE} ({len(shards) - len(missing)} of {len(shards)} shards present)"
        )
    files = sorted(folder.glob("model*.safetensors"))  # model.safetensors or model-0000i-of-0000n.safetensors
    if files:
        return from_headers(label, config, {f.name: f for f in files}, None)
    return from_config(label, config, "config.json only (no safetensors files or index in the folder)")


def from_headers(name: str, config: dict, shards: dict[str, Path], index: dict | None) -> Checkpoint:
    tensors: list[Tensor] = []
    for shard, path in shards.items():
        try:
            tensors.extend(read_safetensors_file(path))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot read the safetensors header of {shard}: {exc}") from None
    total = _index_total(index)
    files = "1 file" if len(shards) == 1 else f"{len(shards)} shards"
    return Checkpoint(name, config, tensors, "headers", f"safetensors headers of {files}", total)


def tensors_from_header_maps(headers: dict[str, dict]) -> list[Tensor]:
    """Tensors from already-fetched headers (name -> (dtype, shape, nbytes)), e.g. from the Hub."""
    return [Tensor(canonical_name(n), d, tuple(s), b) for n, (d, s, b) in headers.items()]


def from_index(name: str, config: dict, index: dict, detail: str) -> Checkpoint:
    """Names from the index, sizes from config.json: the names say which modules are quantized, and how."""
    names = {canonical_name(n) for n in index.get("weight_map", {})}
    dims = _dims(config)
    declared = Quantization.from_config(config, dims.dtype)
    tensors: list[Tensor] = []
    for t in dense_tensors(dims):
        if t.linear and t.name + ".absmax" in names:
            four_bit = declared if declared.bits == 4 else Quantization.requested(4, dims.dtype)
            tensors.extend(four_bit.apply([t]))
        elif t.linear and t.name.rsplit(".", 1)[0] + ".SCB" in names:
            tensors.extend(Quantization.requested(8, dims.dtype).apply([t]))
        else:
            tensors.append(t)
    known = {t.name for t in tensors}
    unknown = sorted(names - known)
    if unknown:
        detail += f"; {len(unknown)} index names the planner does not know (e.g. {unknown[0]})"
    return Checkpoint(name, config, [t for t in tensors if t.name in names], "index", detail, _index_total(index))


def from_config(name: str, config: dict, detail: str) -> Checkpoint:
    dims = _dims(config)
    quantization = Quantization.from_config(config, dims.dtype)
    tensors = quantization.apply(dense_tensors(dims))
    if quantization.bits != 16:
        detail += f"; tensor list derived with the {quantization.label} serialisation rules"
    return Checkpoint(name, config, tensors, "config", detail)


def _dims(config: dict) -> MllamaDims:
    try:
        return MllamaDims.from_config(config)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _index_total(index: dict | None) -> int | None:
    if not index:
        return None
    total = (index.get("metadata") or {}).get("total_size")
    return int(total) if total is not None else None


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {what}; MODEL must be a checkpoint folder or a repo id") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
