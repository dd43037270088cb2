"""Write a whole checkpoint folder: check the device and the free space, then the JSON files, the
tokenizer and the weights."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from inference.checkpoint_builder.config_files import (
    CHAT_TEMPLATE,
    generation_config,
    preprocessor_config,
    tokenizer_config,
    write_json,
)
from inference.checkpoint_builder.plan import CheckpointPlan, plan_checkpoint
from inference.checkpoint_builder.shapes import SHAPES
from inference.checkpoint_builder.tokenizer import build_tokenizer
from inference.checkpoint_builder.weights import MAX_SHARD_BYTES, write_weights

DEVICES = ("cpu", "cuda")


class InsufficientSpaceError(OSError):
    pass


def existing_weight_files(output: Path) -> list[Path]:
    return sorted(output.glob("model*.safetensors")) + sorted(output.glob("model.safetensors.index.json"))


def check_free_space(output: Path, needed_bytes: int) -> None:
    reusable = sum(path.stat().st_size for path in existing_weight_files(output))
    free = shutil.disk_usage(output).free + reusable
    if free < needed_bytes:
        raise InsufficientSpaceError(
            f"{output} has {free / 1e9:.1f} GB free but the weights need {needed_bytes / 1e9:.1f} GB; "
            "free some space, pick another --output, or write fewer layers with --text-layers"
        )


def write_text_files(plan: CheckpointPlan, output: Path) -> None:
    shape = SHAPES[plan.shape_name]
    write_json(output / "config.json", plan.config)
    write_json(output / "generation_config.json", generation_config(shape.vocabulary))
    write_json(output / "preprocessor_config.json", preprocessor_config(shape))
    write_json(output / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    write_json(output / "tokenizer_config.json", tokenizer_config())
    build_tokenizer(shape.vocabulary).save(str(output / "tokenizer.json"), pretty=True)


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU")


def build_checkpoint(
    shape: str,
    output: str | os.PathLike,
    seed: int = 0,
    dtype: str | None = None,
    text_layers: int | None = None,
    config_only: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    quantize: str | None = None,
    device: str = "cpu",
) -> Path:
    """Write a random-weight checkpoint of `shape` ("tiny", "11b", "90b") into `output`; return it.
    `quantize="nf4"` writes it pre-quantized to bitsandbytes 4-bit; `device="cuda"` generates on the GPU."""
    plan = plan_checkpoint(shape, dtype, text_layers, quantize)
    if not config_only:
        check_device(device)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    print(f"{plan.summary()} -> {output}", file=sys.stderr, flush=True)
    if not config_only:
        check_free_space(output, plan.weight_bytes)
        for stale in existing_weight_files(output):
            stale.unlink()
    write_text_files(plan, output)
    if not config_only:
        write_weights(plan, output, seed, max_shard_bytes, device)
    return output
