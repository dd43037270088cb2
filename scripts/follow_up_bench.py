"""A conversation about one image, turn after turn, with the service's own backend: each turn's time to the first
token, and how much of its prompt was read again.

Every turn sends the whole conversation again, as a chat client does: the image (a generated 1120×1120 picture
of 4 tiles, as `vlmkit bench` sends), the questions so far and the answers (greedy, `--answer-tokens` long).
For each turn: prompt tokens, the prompt tokens its slot still held (not read again), the image processor's
and template's time (`prepare`) and the time to the first token (`begin`: prefill and first pick), GPU
synchronised. Run it with `--image-cache-size 0` for a conversation whose image and turns are all read anew.
One JSON line a turn.

    python scripts/follow_up_bench.py --model DIR [--load-in-4bit] [--turns 6] [--image-cache-size 8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from inference.backends import SamplingParams
from inference.backends.transformers_backend import TransformersBackend
from inference.bench.workload import DEFAULT_PROMPTS, generated_images
from inference.conversation import build_conversation
from inference.images import ImagePolicy, load_image
from inference.protocol import Message


def timed_ms(work):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, round((time.perf_counter() - started) * 1e3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--image-cache-size", type=int, default=8)
    parser.add_argument("--static-cache-tokens", type=int, default=4096)
    args = parser.parse_args()

    backend = TransformersBackend(
        args.model,
        device=args.device,
        load_in_4bit=args.load_in_4bit,
        static_cache_tokens=args.static_cache_tokens,
        image_cache_size=args.image_cache_size,
    )
    image_url = generated_images(1, 1120, 1120, seed=0)[0].url
    params = SamplingParams(max_new_tokens=args.answer_tokens, temperature=0, top_p=1, min_p=0)
    policy = ImagePolicy(max_pixels=50_000_000, max_bytes=20 << 20)
    messages: list[dict] = []
    reused = 0
    for turn in range(args.turns):
        question = DEFAULT_PROMPTS[turn % len(DEFAULT_PROMPTS)]
        content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}]
        messages.append({"role": "user", "content": content if turn == 0 else question})
        conversation = build_conversation([Message.model_validate(message) for message in messages])

        def prepare(conversation=conversation):
            image = load_image(conversation.image_url.url, policy) if conversation.image_url else None
            return backend.prepare(conversation.messages, image)

        prompt, prepare_ms = timed_ms(prepare)
        pieces: list[str] = []
        request, first_token_ms = timed_ms(
            lambda: backend.begin(prompt, params, 0, on_text=pieces.append, should_stop=lambda: False)
        )
        while not request.finished:
            backend.advance([request])
        work = backend.prompt_work()
        print(
            json.dumps(
                {
                    "turn": turn + 1,
                    "prompt_tokens": prompt.prompt_tokens,
                    "tokens_reused": work.tokens_reused - reused,
                    "prepare_ms": prepare_ms,
                    "first_token_ms": first_token_ms,
                    "images_encoded": work.images_encoded,
                    "images_reused": work.images_reused,
                }
            ),
            flush=True,
        )
        reused = work.tokens_reused
        messages.append({"role": "assistant", "content": "".join(pieces)})


if __name__ == "__main__":
    main()
