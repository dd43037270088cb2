"""`vlmkit chat [IMAGE]`: a conversation with follow-up questions about one image."""

from __future__ import annotations

import argparse
import sys

import openai

from inference.client import add_connection_arguments, connect, stream_answer, user_message


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", default=None, help="image file or URL the conversation is about")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        client, model = connect(args)
    except openai.APIError as exc:
        print(f"vlmkit chat: cannot reach the server at {args.url}: {exc}", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty()
    messages: list[dict] = []
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        question = line.strip()
        if not question:
            continue
        # The image goes with the first question only; it stays in the history for the follow-ups.
        messages.append(user_message(question, args.image if not messages else None))
        try:
            answer = stream_answer(client, model, messages, args)
        except openai.APIStatusError as exc:
            print(f"vlmkit chat: the server answered {exc.status_code}: {exc.message}", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})
