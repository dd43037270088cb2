"""Build a random-weight Llama 3.2 Vision (Mllama) checkpoint folder, offline and deterministically.

The folder looks like the published one: config.json, generation_config.json, safetensors weights
(sharded with an index for the large shapes), tokenizer.json + tokenizer_config.json,
preprocessor_config.json and chat_template.json. Weights are random (normal, std 0.02; norms 1,
biases 0) and depend only on --seed and the tensor's name. The tokenizer is a small byte-level BPE
trained on this Python's standard library sources, so the same seed on the same Python version gives
byte-identical files.

    python -m inference.checkpoint_builder --shape tiny --output DIR [--seed 0] [--dtype float32|bfloat16]
    python -m inference.checkpoint_builder --shape 11b --output DIR [--dtype bfloat16]
    python -m inference.checkpoint_builder --shape 90b --output DIR [--dtype bfloat16]
    python -m inference.checkpoint_builder --shape 90b --quantize nf4 --device cuda --output DIR

Shapes:
  tiny  ~574k parameters, 56x56 images; for CPU tests (float32 by default).
  11b   meta-llama/Llama-3.2-11B-Vision-Instruct's architecture, ~21 GB in bfloat16.
  90b   meta-llama/Llama-3.2-90B-Vision-Instruct's architecture, ~177 GB in bfloat16.

Other options:
  --text-layers N  keep only the first N text decoder layers (and the cross-attention layers among
                   them) to write a smaller model of the real width; N >= 4 keeps one
                   cross-attention layer of the 11b/90b shapes.
  --config-only    write everything but the weights and print what the weights would take.
  --quantize nf4   write a pre-quantized bitsandbytes 4-bit checkpoint (~50 GB for 90b, ~8.4 GB for 11b):
                   what transformers' save_pretrained writes for the bfloat16 checkpoint loaded with
                   the service's BitsAndBytesConfig (nf4, double quantization, blocksize 64, compute
                   dtype bfloat16, uint8 storage; the vision model, the multi-modal projector and
                   lm_head stay bfloat16), quantization_config in config.json included, like unsloth's
                   *-bnb-4bit repos. Each weight is generated and quantized on its own, so the 16-bit
                   model is never held: a few tensors at a time are. The quantized values are those of
                   the bfloat16 checkpoint with the same seed.
  --device cuda    generate (and quantize) the weights on the GPU: much faster for 90b, but torch's
                   CUDA generator draws other numbers than the CPU one, so the weights differ from a
                   --device cpu build (the default) with the same seed.

The 11b/90b tokenizers put the special tokens at Llama 3.2's ids (<|begin_of_text|> 128000 ...
<|image|> 128256); the ids between the trained BPE tokens and 128000 are unreachable filler tokens
that decode to " unused<id>".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.checkpoint_builder.build import DEVICES, InsufficientSpaceError, build_checkpoint
from inference.checkpoint_builder.nf4 import QUANTIZATIONS
from inference.checkpoint_builder.plan import DTYPES
from inference.checkpoint_builder.shapes import SHAPES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.checkpoint_builder",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: float32 for unquantized tiny, bfloat16 otherwise"
    )
    parser.add_argument("--text-layers", type=int, metavar="N", help="keep only the first N text decoder layers")
    parser.add_argument("--config-only", action="store_true", help="write everything but the weights")
    parser.add_argument(
        "--quantize", choices=QUANTIZATIONS, help="write the checkpoint pre-quantized to bitsandbytes 4-bit"
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to generate (and quantize) the weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build_checkpoint(
            args.shape,
            args.output,
            args.seed,
            args.dtype,
            args.text_layers,
            args.config_only,
            quantize=args.quantize,
            device=args.device,
        )
    except (InsufficientSpaceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
