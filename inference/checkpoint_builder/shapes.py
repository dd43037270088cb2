"""The model shapes the builder writes: the published 11B and 90B architectures and a tiny one for CPU tests,
and where their tokenizers put the token ids.

Values of meta-llama/Llama-3.2-11B-Vision-Instruct and -90B-Vision-Instruct's config.json, as shown on
huggingface.co (e.g. the public copies bababababooey/llama-3.2-11b-vision-instruct-stheno-abliterated
/config.json, saved from the 11B Instruct repo, and gghfez/Llama-3.3-90B-Vision-merged/config.json, saved
from unsloth/Llama-3.2-90B-Vision-Instruct), and the defaults of transformers' MllamaTextConfig/
MllamaVisionConfig, which document the 11B model. The 90B vision tower equals the 11B one (ollama's
llama3.2-vision:90b metadata lists the same vision sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_THETA = 500000.0
DEFAULT_ASPECT_RATIOS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]

TEXT_11B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
}
TEXT_90B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 100,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "cross_attention_layers": list(range(3, 100, 5)),
}
VISION_11B_90B = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_global_layers": 8,
    "attention_heads": 16,
    "image_size": 560,
    "patch_size": 14,
    "intermediate_layers_indices": [3, 7, 15, 23, 30],
    "vision_output_dim": 7680,
    "max_num_tiles": 4,
}
# Every Linear's in_features is a multiple of 64: bitsandbytes' 4-bit CPU kernels need that.
TEXT_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "cross_attention_layers": [1, 3],
}
VISION_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_global_layers": 2,
    "attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
    "intermediate_layers_indices": [1, 3],
    "vision_output_dim": 192,
    "max_num_tiles": 4,
}

# Llama 3.2's named special tokens, in id order; <|image|> comes after all of them (and after the
# reserved tokens, when there are any).
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
IMAGE_TOKEN = "<|image|>"
BPE_VOCAB_SIZE = 1013


@dataclass(frozen=True)
class Vocabulary:
    """Where the token ids sit: regular tokens first, then special tokens, then <|image|>."""

    regular_size: int
    reserved_count: int

    @property
    def special_tokens(self) -> list[str]:
        reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(self.reserved_count)]
        return [*NAMED_SPECIAL_TOKENS, *reserved]

    @property
    def text_vocab_size(self) -> int:
        return self.regular_size + len(self.special_tokens)

    @property
    def image_token_id(self) -> int:
        return self.text_vocab_size

    def id_of(self, special_token: str) -> int:
        return self.regular_size + self.special_tokens.index(special_token)


@dataclass(frozen=True)
class Shape:
    text: dict
    vision: dict
    vocabulary: Vocabulary
    default_dtype: str


SHAPES = {
    "tiny": Shape(TEXT_TINY, VISION_TINY, Vocabulary(BPE_VOCAB_SIZE, reserved_count=0), "float32"),
    "11b": Shape(TEXT_11B, VISION_11B_90B, Vocabulary(128000, reserved_count=245), "bfloat16"),
    "90b": Shape(TEXT_90B, VISION_11B_90B, Vocabulary(128000, reserved_count=245), "bfloat16"),
}

# The published configs' initializer_range: the spread of the random weights.
INIT_STD = 0.02
