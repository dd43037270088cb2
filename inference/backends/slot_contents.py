"""What a decoding slot still holds once its request has ended, so that the conversation's next turn reads only
what is new.

The chat API is stateless: a follow-up sends the whole conversation again, whose prompt begins with the last
turn's prompt and answer. When the request ends, its slot of the static decoder still holds the keys and values
of its prompt and of every answer token but the last (a token's are written by the step that takes it in; later
steps write only past them). If the next request in that slot begins with the same tokens, and with the same
image (or none), those positions need not be computed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotContents:
    token_ids: tuple[int, ...]  # the tokens whose keys and values the slot's positions 0, 1, ... hold
    image_key: str | None  # the digest of the image whose cross-attention keys and values it holds; None: no image

    def reusable(self, token_ids: Sequence[int], image_key: str | None) -> int:
        """How many of a prompt's first tokens the slot holds already: those it shares with `token_ids`, when the
        prompt's image is the slot's (`image_key`: None for a prompt without one). Never the prompt's last token:
        its position gives the logits of the answer's first."""
        if image_key != self.image_key:
            return 0
        shared = 0
        for held, wanted in zip(self.token_ids, token_ids):
            if held != wanted:
                break
            shared += 1
        return min(shared, len(token_ids) - 1)
