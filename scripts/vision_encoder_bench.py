"""The Mllama vision encoder on one GPU: transformers' masked forward against the unmasked one.

Random weights of the 11B/90B vision tower (the same in both models) in bfloat16; one image of 1, 2 and
4 tiles. For each forward: the first call (cuDNN plans its attention per shape then), and the median of
10 later calls, eager as the service runs it (the unmasked forward reads its token counts on the host,
so it cannot be captured in a CUDA graph); and the largest difference from transformers' output. The
unmasked forward runs twice: with the kernel torch picks, and with cuDNN excluded as for the prompt.
One JSON line each.

    python scripts/vision_encoder_bench.py [--shape tiny --device cpu]   # tiny/cpu: checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn.attention import sdpa_kernel
from transformers import MllamaVisionConfig
from transformers.models.mllama.modeling_mllama import MllamaVisionModel

from inference.backends.prompt_attention import PROMPT_BACKENDS
from inference.backends.vision_encoder import forward_without_padding_mask
from inference.checkpoint_builder.shapes import SHAPES

TILE_LAYOUTS = {1: (1, 1), 2: (1, 2), 4: (2, 2)}


def seconds(fn, device: str) -> float:
    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="11b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = MllamaVisionConfig(**SHAPES[args.shape].vision)
    model = MllamaVisionModel(config).to(args.device, dtype).eval()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "shape": args.shape}), flush=True)

    for tiles, layout in TILE_LAYOUTS.items():
        size = config.image_size
        inputs = {
            "pixel_values": torch.randn(1, 1, config.max_num_tiles, 3, size, size, device=args.device, dtype=dtype),
            "aspect_ratio_ids": torch.tensor([[config.supported_aspect_ratios.index(list(layout)) + 1]]),
            "aspect_ratio_mask": (torch.arange(config.max_num_tiles) < tiles).long().view(1, 1, -1),
        }
        inputs = {key: value.to(args.device) for key, value in inputs.items()}

        def unmasked():
            return forward_without_padding_mask(model, **inputs).last_hidden_state

        def unmasked_without_cudnn():
            with sdpa_kernel(PROMPT_BACKENDS):
                return unmasked()

        forwards = {
            "transformers": lambda: model(**inputs).last_hidden_state,
            "unmasked": unmasked,
            "unmasked_without_cudnn": unmasked_without_cudnn,
        }
        expected = None
        for label, forward in forwards.items():
            first = seconds(forward, args.device)
            median = statistics.median(seconds(forward, args.device) for _ in range(args.repeats))
            output = forward().float()
            expected = output if expected is None else expected
            print(
                json.dumps(
                    {
                        "tiles": tiles,
                        "forward": label,
                        "first_call_ms": round(first * 1e3, 2),
                        "median_ms": round(median * 1e3, 2),
                        "max_abs_difference": float((output - expected).abs().max()),
                        "largest_output": float(expected.abs().max()),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
