"""A small byte-level BPE tokenizer with Llama 3's pre-tokenizer and Llama 3.2's special tokens.

It is trained on this Python's standard library sources, so the same Python version gives the same
tokenizer.json. The 11b/90b vocabularies put the special tokens at Llama 3.2's ids (<|begin_of_text|>
128000 ... <|image|> 128256); the ids between the trained BPE tokens and 128000 are unreachable filler
tokens that decode to " unused<id>".
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from inference.checkpoint_builder.shapes import BPE_VOCAB_SIZE, IMAGE_TOKEN, Vocabulary

LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TRAINING_FILE_COUNT = 40


def training_corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:TRAINING_FILE_COUNT]
    return [path.read_text(encoding="utf-8") for path in files]


def llama3_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def train_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = llama3_pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    return trained["vocab"], [tuple(merge) for merge in trained["merges"]]


def build_tokenizer(vocabulary: Vocabulary) -> Tokenizer:
    vocab, merges = train_bpe()
    if len(vocab) != BPE_VOCAB_SIZE:
        raise RuntimeError(f"BPE training gave {len(vocab)} tokens, expected {BPE_VOCAB_SIZE}")
    # The pre-tokenizer splits letters from digits, so encoding never produces these filler tokens.
    vocab.update({f"Ġunused{i}": i for i in range(len(vocab), vocabulary.regular_size)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = llama3_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([*vocabulary.special_tokens, IMAGE_TOKEN])
    bos = "<|begin_of_text|>"
    # Like Llama 3's tokenizer, encoding with special tokens prepends <|begin_of_text|>.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocabulary.id_of(bos))]
            ),
        ]
    )
    check_token_ids(tokenizer, vocabulary)
    return tokenizer


def check_token_ids(tokenizer: Tokenizer, vocabulary: Vocabulary) -> None:
    expected = {token: vocabulary.id_of(token) for token in vocabulary.special_tokens}
    expected[IMAGE_TOKEN] = vocabulary.image_token_id
    actual = {token: tokenizer.token_to_id(token) for token in expected}
    if actual != expected:
        raise RuntimeError("special tokens landed on unexpected ids")
