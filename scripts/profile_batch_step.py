"""Where a batched decoding step and a prefill spend their time, on one CUDA GPU.

Loads a checkpoint through the service's backend with the static decoder (`--slots` requests
batched), times a prefill (4-tile image), fills every slot with an image request, times `--steps`
batched steps, then profiles a few of each with torch.profiler and prints the CUDA kernels that take
the most time. JSON lines: prefill and step times, then one line per top kernel.

With `--overlap` (overlap_image_encoding), also the steps taken while images go through the vision
encoder on its own stream: step time then and alone, and the encoder's time alongside and alone.
`--no-tensor-cores` turns nf4_tensor_cores off.

    PYTHONPATH=. python scripts/profile_batch_step.py --model DIR [--slots 8] [--nf4-kernel auto] [--overlap]
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
from torch.profiler import ProfilerActivity, profile

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend


def synchronized_seconds(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def top_kernels(prof, label: str, per: int, count: int = 12) -> None:
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events)
    kernels = sum(e.count for e in events) // per
    print(json.dumps({"profile": label, "gpu_ms_per_run": round(total / per / 1000, 2), "kernels_per_run": kernels}))
    for event in sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:count]:
        print(
            json.dumps(
                {
                    "profile": label,
                    "kernel": event.key[:90],
                    "calls_per_run": event.count // per,
                    "ms_per_run": round(event.self_device_time_total / per / 1000, 3),
                    "share": round(event.self_device_time_total / total, 3),
                }
            )
        )


def steps_alongside_the_encoder(backend, requests, inputs, encode_alone_s: float, images: int = 8) -> dict:
    """Decoding steps while images go through the encoder on its own stream, one after another."""
    step_s, encode_s = [], []
    for _ in range(images):
        torch.cuda.synchronize()
        started = time.perf_counter()
        image = backend.decoder.prompt.encode(inputs)
        while not image.ready():
            step_started = time.perf_counter()  # no device-wide sync: that would wait for the encoder
            backend.advance(requests)  # ends by reading its tokens, i.e. when its step is done
            step_s.append(time.perf_counter() - step_started)
        encode_s.append(time.perf_counter() - started)
    return {
        "overlap": True,
        "steps_while_encoding": len(step_s),
        "step_ms_median_while_encoding": round(statistics.median(step_s) * 1000, 2) if step_s else None,
        "encode_ms_median_alongside": round(statistics.median(encode_s) * 1000, 1),
        "encode_ms_alone": round(encode_alone_s * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--nf4-kernel", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--overlap", action="store_true", help="overlap_image_encoding, and time steps alongside it")
    parser.add_argument("--tensor-cores", action=argparse.BooleanOptionalAction, default=True, help="nf4_tensor_cores")
    args = parser.parse_args()
    backend = TransformersBackend(
        args.model,
        device="cuda",
        dtype="bfloat16",
        nf4_kernel=args.nf4_kernel,
        nf4_tensor_cores=args.tensor_cores,
        static_cache_tokens=2048,
        max_batch_size=args.slots,
        overlap_image_encoding=args.overlap,
    )
    tile = backend.model.config.vision_config.image_size
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    image = Image.new("RGB", (2 * tile, 2 * tile), (120, 60, 30))
    prepare_s = synchronized_seconds(lambda: backend.prepare(messages, image))
    prompt = backend.prepare(messages, image)
    params = SamplingParams(max_new_tokens=1000, temperature=0, top_p=1, min_p=0, min_new_tokens=1000)
    inputs = {name: tensor.cuda() for name, tensor in prompt.inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(backend.vision_dtype)
    prefill_s = [synchronized_seconds(lambda: backend.decoder.prefill(inputs, 0)) for _ in range(4)]
    encode_s = [synchronized_seconds(lambda: backend.decoder.prompt.encode(inputs).states()) for _ in range(4)]
    requests = [
        backend.begin(prompt, params, slot, on_text=lambda text: None, should_stop=lambda: False)
        for slot in range(args.slots)
    ]
    while any(request.produced == 0 for request in requests):  # in a batch, advance reads image prompts
        backend.advance(requests)
    for _ in range(3):
        backend.advance(requests)  # kernel choice and graph capture
    step_s = [synchronized_seconds(lambda: backend.advance(requests)) for _ in range(args.steps)]
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(),
                "model": str(args.model.name),
                "slots": args.slots,
                "nf4_kernel": backend.nf4_kernel,
                "prompt_tokens": prompt.prompt_tokens,
                "prepare_ms": round(prepare_s * 1000, 1),
                "prefill_ms": [round(s * 1000, 1) for s in prefill_s],
                "encode_ms": [round(s * 1000, 1) for s in encode_s],
                "step_ms_median": round(statistics.median(step_s) * 1000, 2),
                "decode_tok_s_all_slots": round(args.slots / statistics.median(step_s), 1),
            }
        ),
        flush=True,
    )
    if args.overlap:
        print(json.dumps(steps_alongside_the_encoder(backend, requests, inputs, statistics.median(encode_s))))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            backend.advance(requests)
        torch.cuda.synchronize()
    top_kernels(prof, "step", 5)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            backend.decoder.prefill(inputs, 0)
        torch.cuda.synchronize()
    top_kernels(prof, "prefill", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
