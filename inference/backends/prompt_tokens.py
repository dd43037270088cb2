"""Token ids of a chat prompt in which only the chat template's own special tokens are control tokens.

Client text that spells a special token (`<|eot_id|>`, `<|image|>`, a `<|start_header_id|>` header) is
tokenized as the characters it is: it can neither forge a turn nor add an image. The template is rendered
with a placeholder for each client text; the rendering is cut at the special tokens it wrote, and each
piece between them, client text put back in, is tokenized with special-token matching off. For text that
spells no special token the ids are the ones the tokenizer gives the whole rendered prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

_PLACEHOLDER = "\ue000vlmkit-client-text-{}\ue001"
_PLACEHOLDER_PATTERN = re.compile("\ue000vlmkit-client-text-(\\d+)\ue001")


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, render: Callable[[list[dict]], str], messages: list[dict]
) -> list[int]:
    """`render` turns chat-template messages into the prompt string; `messages` hold client text."""
    texts: list[str] = []
    skeleton = render([_with_placeholders(message, texts) for message in messages])
    special_ids = {
        token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    ids: list[int] = []
    for piece in _split_at(skeleton, special_ids):
        if piece in special_ids:
            ids.append(special_ids[piece])
        elif piece:
            text = _PLACEHOLDER_PATTERN.sub(lambda match: texts[int(match.group(1))], piece)
            ids.extend(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return ids


def _with_placeholders(message: dict, texts: list[str]) -> dict:
    def hold(text: str) -> str:
        texts.append(text)
        return _PLACEHOLDER.format(len(texts) - 1)

    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": hold(content)}
    return {
        **message,
        "content": [{**part, "text": hold(part["text"])} if part.get("type") == "text" else part for part in content],
    }


def _split_at(skeleton: str, special_tokens: dict[str, int]) -> list[str]:
    """The skeleton cut into special tokens and the text between them (longest token first)."""
    alternatives = "|".join(re.escape(token) for token in sorted(special_tokens, key=len, reverse=True))
    return re.split(f"({alternatives})", skeleton) if alternatives else [skeleton]
