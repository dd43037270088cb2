"""Compare the memory planner's estimate with what torch actually allocates on a CUDA GPU.

For each checkpoint shape and weight format: load through the service's backend, run a prefill with a
4-tile image and a short decode, and set torch's peak allocated memory beside the planner's
`torch_allocated` for the same context. Prints one JSON line per case.

    PYTHONPATH=. python scripts/plan_vs_gpu.py --shapes tiny 11b --workdir /tmp/plan-vs-gpu
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.checkpoint_builder import build_checkpoint
from inference.planner import breakdown

NEW_TOKENS = 16
GIB = 1024**3


def measure(model_dir: Path, four_bit: bool, tile: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    backend = TransformersBackend(model_dir, device="cuda", dtype="bfloat16", load_in_4bit=four_bit)
    loaded = torch.cuda.memory_allocated()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    prompt = backend.prepare(messages, Image.new("RGB", (2 * tile, 2 * tile), (120, 60, 30)))  # 4 tiles
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    backend.generate(
        prompt,
        SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, top_p=1, min_p=0, min_new_tokens=NEW_TOKENS),
        lambda text: None,
        lambda: False,
    )
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    context = prompt.prompt_tokens + NEW_TOKENS
    estimate = breakdown(model_dir, context=context, batch=1, images=1, bits=4 if four_bit else None)
    del backend
    gc.collect()
    return {
        "weights_measured_gib": round(loaded / GIB, 3),
        "weights_planned_gib": round(estimate["weights"] / GIB, 3),
        "peak_measured_gib": round(peak / GIB, 3),
        "peak_planned_gib": round(estimate["torch_allocated"] / GIB, 3),
        "peak_error_pct": round(100 * (estimate["torch_allocated"] - peak) / peak, 1),
        "context_tokens": context,
        "generate_s": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "11b"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/plan-vs-gpu"))
    args = parser.parse_args()
    for shape in args.shapes:
        model_dir = build_checkpoint(shape, args.workdir / shape, dtype="bfloat16")
        tile = json.loads((model_dir / "config.json").read_text())["vision_config"]["image_size"]
        for four_bit in (False, True):
            result = {"shape": shape, "weights": "nf4" if four_bit else "bf16", **measure(model_dir, four_bit, tile)}
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
