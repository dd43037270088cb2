"""Where the time to first token goes, stage by stage, with the service's own code on one request.

The request is what `vlmkit bench` sends (a generated 1120×1120 image of 4 tiles, PNG in a data: URI, and
a short question). Each stage runs the function the server runs for it, timed alone (median of --repeats,
after one warm-up); the GPU stages are synchronised. What is left between their sum and the TTFT `vlmkit
bench` reports through HTTP is the HTTP server, the event loop, the queue and the first chunk's trip.

The bench's requests differ in their questions, so in prompt length: `--new-lengths N` also times the prefill
of N such requests the first time each is seen and again right after (what a prompt length the process has
not seen before costs, e.g. for attention kernels planned per shape).

    python scripts/ttft_breakdown.py --model DIR [--load-in-4bit] [--repeats 7] [--new-lengths 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.bench.workload import build as build_workload
from inference.conversation import build_conversation
from inference.images import ImagePolicy, load_image
from inference.protocol import ChatCompletionRequest


def synchronized_ms(stage) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    stage()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return round((time.perf_counter() - started) * 1e3, 2)


def median_ms(stage, repeats: int) -> float:
    stage()
    return round(statistics.median(synchronized_ms(stage) for _ in range(repeats)), 2)


def first_and_second_sight(backend, workload, policy, one_token, count: int) -> list[dict]:
    """Prefill + first token of the workload's requests 1..count, each timed when first seen and right after."""
    rows = []
    for index in range(1, count + 1):
        messages = ChatCompletionRequest.model_validate({"model": "m", "messages": workload.request(index).messages()})
        conversation = build_conversation(messages.messages)
        image = load_image(conversation.image_url.url, policy)
        prompt = backend.prepare(conversation.messages, image)

        def stage(prompt=prompt):
            return backend.generate(prompt, one_token, lambda text: None, lambda: False)

        rows.append(
            {
                "prompt_tokens": prompt.prompt_tokens,
                "first_ms": synchronized_ms(stage),
                "again_ms": synchronized_ms(stage),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-lengths", type=int, default=0)
    args = parser.parse_args()

    workload = build_workload(None, 1, (1120, 1120), None, seed=0)
    request = workload.request(0)
    body = json.dumps(
        {"model": "m", "max_tokens": 1, "temperature": 0, "stream": True, "messages": request.messages()}
    ).encode()
    backend = TransformersBackend(
        args.model, device=args.device, load_in_4bit=args.load_in_4bit, static_cache_tokens="auto"
    )
    policy = ImagePolicy(max_pixels=50_000_000, max_bytes=20 << 20)
    parsed = ChatCompletionRequest.model_validate_json(body)
    conversation = build_conversation(parsed.messages)
    image = load_image(conversation.image_url.url, policy)
    prompt = backend.prepare(conversation.messages, image)
    one_token = SamplingParams(max_new_tokens=1, temperature=0, top_p=1, min_p=0)

    stages = {
        "parse_json_body": lambda: ChatCompletionRequest.model_validate_json(body),
        "build_conversation": lambda: build_conversation(parsed.messages),
        "load_image (base64 + decode)": lambda: load_image(conversation.image_url.url, policy),
        "prepare (template + tokenizer + image processor)": lambda: backend.prepare(conversation.messages, image),
        "image_processor alone": lambda: backend.processor.image_processor(images=[[image]], return_tensors="pt"),
        "prefill + first token (GPU)": lambda: backend.generate(prompt, one_token, lambda text: None, lambda: False),
    }
    report = {
        "body_bytes": len(body),
        "image_processor": type(backend.processor.image_processor).__name__,
        "prompt_tokens": prompt.prompt_tokens,
        "stages_ms": {},
    }
    for name, stage in stages.items():
        report["stages_ms"][name] = median_ms(stage, args.repeats)
    counted = [name for name in report["stages_ms"] if name != "image_processor alone"]
    report["sum_ms"] = round(sum(report["stages_ms"][name] for name in counted), 2)
    if args.new_lengths:
        report["prefill_by_prompt_length"] = first_and_second_sight(
            backend, workload, policy, one_token, args.new_lengths
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
