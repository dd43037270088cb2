"""`vlmkit ask`: one question about an image (or none), the answer streamed from a running server."""

from __future__ import annotations

import argparse
import base64
import mimetypes
import os
import sys
from pathlib import Path

import openai

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("VLMKIT_URL", DEFAULT_URL),
        help=f"the server's OpenAI base URL (default {DEFAULT_URL}, or $VLMKIT_URL)",
    )
    parser.add_argument(
        "--api-key", default=None, help="API key; better set $VLMKIT_API_KEY so it stays out of the process list"
    )
    parser.add_argument("--model", default=None, help="model id (default: the server's only model)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer, in tokens")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=None,
        help="shortest answer, in tokens (min_tokens, vLLM's extension, which vlmkit serve honours)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file, http(s) URL, or '-' for a text-only question")
    parser.add_argument("question", help="what to ask about the image")
    add_connection_arguments(parser)


def connect(args: argparse.Namespace) -> tuple[openai.OpenAI, str]:
    api_key = args.api_key or os.environ.get("VLMKIT_API_KEY") or "none"
    client = openai.OpenAI(base_url=args.url, api_key=api_key, max_retries=2)
    model = args.model or client.models.list().data[0].id
    return client, model


def image_part(image: str) -> dict:
    if image.startswith(("http://", "https://", "data:")):
        url = image
    else:
        path = Path(image)
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        url = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(question: str, image: str | None) -> dict:
    content: list[dict] = [image_part(image)] if image and image != "-" else []
    content.append({"type": "text", "text": question})
    return {"role": "user", "content": content}


def stream_answer(client: openai.OpenAI, model: str, messages: list[dict], args: argparse.Namespace) -> str:
    """Print the answer as it arrives and return it whole."""
    options = {
        key: value
        for key, value in (("max_tokens", args.max_tokens), ("temperature", args.temperature))
        if value is not None
    }
    extra_body = {"min_tokens": args.min_tokens} if args.min_tokens else None
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, extra_body=extra_body, **options
    )
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            print(pieces[-1], end="", flush=True)
    print()
    return "".join(pieces)


def run(args: argparse.Namespace) -> int:
    try:
        client, model = connect(args)
        stream_answer(client, model, [user_message(args.question, args.image)], args)
    except FileNotFoundError as exc:
        print(f"vlmkit ask: no such image file: {exc.filename}", file=sys.stderr)
        return 2
    except openai.APIStatusError as exc:
        print(f"vlmkit ask: the server answered {exc.status_code}: {_message(exc)}", file=sys.stderr)
        return 1
    except openai.APIConnectionError:
        print(f"vlmkit ask: cannot reach the server at {args.url}", file=sys.stderr)
        return 1
    return 0


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("message") or body.get("error", {}).get("message") or str(exc)
