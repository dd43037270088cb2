"""Decode speed on a CUDA GPU: transformers' generate against vlmkit's static-cache decoder.

Random weights of a real shape (built with inference.checkpoint_builder), loaded through the service's
backend; one 4-tile image and a short question; greedy answers of a fixed length. Prints one JSON line
per (format, nf4 kernel, engine): time to first token, batch-1 decode tok/s (median over repeats, with the
spread), and the ratio to the memory-bandwidth bound. Also checks that both engines give the same
greedy tokens. 4-bit runs twice: with bitsandbytes' kernels, then with nf4_kernel: auto
(per layer shape the faster of bitsandbytes and vlmkit's Triton kernel).

    PYTHONPATH=. python scripts/decode_speed.py --shape 11b --formats bf16 nf4 --new-tokens 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from inference.backends import SamplingParams, nf4_kernel
from inference.backends.transformers_backend import TransformersBackend
from inference.checkpoint_builder import build_checkpoint

BANDWIDTH_BYTES_PER_S = 3.0e12  # measured device-to-device on the H100 this was written for


def greedy(tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=0, top_p=1, min_p=0, min_new_tokens=tokens)


def timed(backend: TransformersBackend, prompt, tokens: int) -> tuple[float, str]:
    pieces: list[str] = []
    torch.cuda.synchronize()
    started = time.perf_counter()
    backend.generate(prompt, greedy(tokens), pieces.append, lambda: False)
    torch.cuda.synchronize()
    return time.perf_counter() - started, "".join(pieces)


def decode_bytes(model) -> int:
    """Bytes read per decoded token: the language model's weights and the output head."""
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if "vision_model" not in name and "multi_modal_projector" not in name
    )


@torch.inference_mode()
def teacher_forced_agreement(backend: TransformersBackend, prompt, tokens: int = 32) -> dict:
    """Feed generate's own greedy tokens through the static decoder and compare the logits step by step.

    Random weights give near-uniform logits, where bf16 rounding differences between two attention
    kernels flip the argmax; comparing the logits themselves says whether the decoder is right.
    """
    inputs = {name: tensor.to(backend.model.device) for name, tensor in prompt.inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(backend.vision_dtype)
    reference = backend.model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        output_logits=True,
        return_dict_in_generate=True,
    )
    expected = [logits[0].float() for logits in reference.logits]
    chosen = reference.sequences[0, -tokens:].tolist()
    logits = backend.decoder.prefill(inputs)[0]
    errors, agree = [], 0
    for step in range(tokens):
        scale = expected[step].std()
        errors.append(float((logits - expected[step]).abs().max() / scale))
        agree += int(logits.argmax()) == int(expected[step].argmax())
        if step + 1 < tokens:
            logits = backend.decoder.step(chosen[step])[0]
    return {
        "teacher_forced_steps": tokens,
        "argmax_agreement": agree / tokens,
        "max_logit_error_in_stds": round(max(errors), 4),
        "median_logit_error_in_stds": round(statistics.median(errors), 4),
    }


def measure(model_dir: Path, four_bit: bool, new_tokens: int, repeats: int, tile: int) -> list[dict]:
    backend = TransformersBackend(
        model_dir,
        device="cuda",
        dtype="bfloat16",
        load_in_4bit=four_bit,
        nf4_kernel="bitsandbytes",
        static_cache_tokens=4096,
    )
    static = backend.decoder
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    prompt = backend.prepare(messages, Image.new("RGB", (2 * tile, 2 * tile), (120, 60, 30)))
    bound = BANDWIDTH_BYTES_PER_S / decode_bytes(backend.model)
    results = []
    for kernel in ("bitsandbytes", "auto") if four_bit else ("-",):
        if kernel == "auto":
            nf4_kernel.use_triton_kernel(backend.model)
            static._graphs.clear()  # recapture with the chosen kernels
        answers = {}
        for engine, decoder in (("generate", None), ("static+cuda-graph", static)):
            backend.decoder = decoder
            for _ in range(2):
                timed(backend, prompt, 8)  # warm-up (kernel tuning and the graph capture)
            answers[engine] = timed(backend, prompt, 32)[1]
            first, rates = [], []
            for _ in range(repeats):
                one, _ = timed(backend, prompt, 1)
                many, _ = timed(backend, prompt, new_tokens + 1)
                first.append(one)
                rates.append(new_tokens / (many - one))
            results.append(
                {
                    "format": "nf4" if four_bit else "bf16",
                    "nf4_kernel": kernel,
                    "engine": engine,
                    "prompt_tokens": prompt.prompt_tokens,
                    "ttft_s": round(statistics.median(first), 3),
                    "decode_tok_s": round(statistics.median(rates), 1),
                    "decode_tok_s_runs": [round(rate, 1) for rate in rates],
                    "bandwidth_bound_tok_s": round(bound, 1),
                    "ratio_to_bound": round(statistics.median(rates) / bound, 3),
                }
            )
        backend.decoder = static
        agreement = teacher_forced_agreement(backend, prompt)
        for result in results[-2:]:
            result["greedy_32_tokens_equal"] = answers["generate"] == answers["static+cuda-graph"]
            result.update(agreement)
    del backend, static
    torch.cuda.empty_cache()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="11b")
    parser.add_argument("--formats", nargs="+", default=["bf16", "nf4"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/decode-speed"))
    args = parser.parse_args()
    model_dir = args.workdir / args.shape
    if not (model_dir / "config.json").exists():
        build_checkpoint(args.shape, model_dir, dtype="bfloat16")
    tile = json.loads((model_dir / "config.json").read_text())["vision_config"]["image_size"]
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape}))
    for fmt in args.formats:
        for result in measure(model_dir, fmt == "nf4", args.new_tokens, args.repeats, tile):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
