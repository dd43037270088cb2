"""Build a random-weight Llama 3.2 Vision (Mllama) checkpoint folder, offline and deterministically.

The folder looks like the published one: config.json, generation_config.json, safetensors weights
(sharded with an index for the large shapes), tokenizer.json + tokenizer_config.json,
preprocessor_config.json and chat_template.json. Weights are random (normal, std 0.02; norms 1,
biases 0) and depend only on --seed and the tensor's name. The tokenizer is a small byte-level BPE
trained on this Python's standard library sources, so the same seed on the same Python version gives
byte-identical files.

    python scripts/build_mllama_checkpoint.py --shape tiny --output DIR [--seed 0] [--dtype float32|bfloat16]
    python scripts/build_mllama_checkpoint.py --shape 11b --output DIR [--dtype bfloat16]
    python scripts/build_mllama_checkpoint.py --shape 90b --output DIR [--dtype bfloat16]
    python scripts/build_mllama_checkpoint.py --shape 90b --quantize nf4 --device cuda --output DIR

Shapes:
  tiny  ~574k parameters, 56x56 images; for CPU tests (float32 by default).
  11b   meta-llama/Llama-3.2-11B-Vision-Instruct's architecture, ~21 GB in bfloat16.
  90b   meta-llama/Llama-3.2-90B-Vision-Instruct's architecture, ~177 GB in bfloat16.

Other options:
  --text-layers N  keep only the first N text decoder layers (and the cross-attention layers among
                   them) to write a smaller model of the real width; N >= 4 keeps one
                   cross-attention layer of the 11b/90b shapes.
  --config-only    write everything but the weights and print what the weights would take.
  --quantize nf4   write a pre-quantized bitsandbytes 4-bit checkpoint (~50 GB for 90b, ~8.4 GB for 11b):
                   what transformers' save_pretrained writes for the bfloat16 checkpoint loaded with
                   the service's BitsAndBytesConfig (nf4, double quantization, blocksize 64, compute
                   dtype bfloat16, uint8 storage; the vision model, the multi-modal projector and
                   lm_head stay bfloat16), quantization_config in config.json included, like unsloth's
                   *-bnb-4bit repos. Each weight is generated and quantized on its own, so the 16-bit
                   model is never held: a few tensors at a time are. The quantized values are those of
                   the bfloat16 checkpoint with the same seed. Each safetensors header is written last,
                   into the space its longest possible form takes, padded with spaces (as the format
                   allows): the quant states' JSON lengths are only known once quantized.
  --device cuda    generate (and quantize) the weights on the GPU: much faster for 90b, but torch's
                   CUDA generator draws other numbers than the CPU one, so the weights differ from a
                   --device cpu build (the default) with the same seed.

The 11b/90b tokenizers put the special tokens at Llama 3.2's ids (<|begin_of_text|> 128000 ...
<|image|> 128256); the ids between the trained BPE tokens and 128000 are unreachable filler tokens
that decode to " unused<id>".

Usable as a module: build_checkpoint(shape, output, seed=0, dtype=None, ..., quantize=None,
device="cpu") -> Path.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import struct
import sys
import sysconfig
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# --- Published configurations -------------------------------------------------------------------
# Values of meta-llama/Llama-3.2-11B-Vision-Instruct and -90B-Vision-Instruct's config.json, as shown
# on huggingface.co (e.g. the public copies bababababooey/llama-3.2-11b-vision-instruct-stheno-abliterated
# /config.json, saved from the 11B Instruct repo, and gghfez/Llama-3.3-90B-Vision-merged/config.json,
# saved from unsloth/Llama-3.2-90B-Vision-Instruct), and the defaults of transformers'
# MllamaTextConfig/MllamaVisionConfig, which document the 11B model. The 90B vision tower equals the
# 11B one (ollama's llama3.2-vision:90b metadata lists the same vision sizes).

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
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB_SIZE = 1013
TRAINING_FILE_COUNT = 40

# Llama 3.2 Vision Instruct's chat_template.json, except that the date no longer comes from
# strftime_now: it is fixed (callers may still pass date_string) so rendered prompts are reproducible.
CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- Find out if there are any images #}
{% set image_ns = namespace(has_images=false) %}
{%- for message in messages %}
    {%- for content in message['content'] %}
        {%- if content['type'] == 'image' %}
            {%- set image_ns.has_images = true %}
        {%- endif %}
    {%- endfor %}
{%- endfor %}

{#- Error out if there are images and system message #}
{%- if image_ns.has_images and not system_message == "" %}
    {{- raise_exception("Prompting with images is incompatible with system messages.") }}
{%- endif %}

{#- System message if there are no images #}
{%- if not image_ns.has_images %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {%- if tools is not none %}
        {{- "Environment: ipython\\n" }}
    {%- endif %}
    {{- "Cutting Knowledge Date: December 2023\\n" }}
    {{- "Today Date: " + date_string + "\\n\\n" }}
    {%- if tools is not none and not tools_in_user_message %}
        {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
        {{- "Do not use variables.\\n\\n" }}
        {%- for t in tools %}
            {{- t | tojson(indent=4) }}
            {{- "\\n\\n" }}
        {%- endfor %}
    {%- endif %}
    {{- system_message }}
    {{- "<|eot_id|>" }}
{%- endif %}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- else %}
            {%- for content in message['content'] %}
                {%- if content['type'] == 'image' %}
                    {{- '<|image|>' }}
                {%- elif content['type'] == 'text' %}
                    {{- content['text'] }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

INIT_STD = 0.02
MAX_SHARD_BYTES = 5_000_000_000
CHUNK_ELEMENTS = 1 << 24
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.uint8: "U8"}
SAFETENSORS_ITEM_SIZES = {"F32": 4, "BF16": 2, "U8": 1}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICES = ("cpu", "cuda")

# --- bitsandbytes 4-bit -------------------------------------------------------------------------
# The service's BitsAndBytesConfig (inference/backends/transformers_backend.py), as transformers 5.17
# writes it into config.json with save_pretrained.
QUANTIZATIONS = ("nf4",)
NF4_BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256  # bitsandbytes quantizes the per-block absmax again, in blocks of 256
FLOAT_REPR_MAX_LENGTH = 24  # len(repr(-1.2345678901234567e-308))
UNQUANTIZED_MODULES = ["model.vision_model", "model.multi_modal_projector", "lm_head"]
NF4_QUANTIZATION_CONFIG = {
    "_load_in_4bit": True,
    "_load_in_8bit": False,
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False,
    "llm_int8_skip_modules": UNQUANTIZED_MODULES,
    "llm_int8_threshold": 6.0,
    "load_in_4bit": True,
    "load_in_8bit": False,
    "quant_method": "bitsandbytes",
}

# transformers 5 names modules differently from the published checkpoints; files use the published names.
PUBLISHED_NAME_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_model.", "vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


class InsufficientSpaceError(OSError):
    pass


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


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    fill: str  # "normal", "ones" or "zeros"
    quantized: bool = False  # stored as bitsandbytes nf4

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StoredTensor:
    """One entry of a safetensors file."""

    name: str
    dtype: str  # safetensors' name: "F32", "BF16", "U8"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_ITEM_SIZES[self.dtype]


@dataclass(frozen=True)
class CheckpointPlan:
    shape_name: str
    config: dict
    tensors: list[TensorSpec]
    dtype: torch.dtype
    quantize: str | None = None

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors)

    @property
    def quantized_parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors if tensor.quantized)

    @property
    def weight_bytes(self) -> int:
        """What the weight files hold; for 4-bit an upper bound: quant states' JSON counted at its longest."""
        return sum(stored_bytes(tensor, self.dtype) for tensor in self.tensors)

    def summary(self) -> str:
        dtype_name = str(self.dtype).removeprefix("torch.")
        if self.quantize:
            return (
                f"{self.shape_name}: {self.parameter_count:,} parameters "
                f"({self.quantized_parameter_count:,} in {self.quantize}), "
                f"{self.weight_bytes / 1e9:.2f} GB of {self.quantize} and {dtype_name} weights"
            )
        return (
            f"{self.shape_name}: {self.parameter_count:,} parameters, "
            f"{self.weight_bytes / 1e9:.2f} GB of {dtype_name} weights"
        )


# --- Configuration ------------------------------------------------------------------------------


def model_config(shape: Shape, dtype_name: str, text_layers: int | None = None) -> dict:
    vocabulary = shape.vocabulary
    return {
        "architectures": ["MllamaForConditionalGeneration"],
        "model_type": "mllama",
        "image_token_index": vocabulary.image_token_id,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
        # The published value. Without one, transformers 5 takes the folder for an old Mistral tokenizer.
        "transformers_version": "4.45.0.dev0",
        "text_config": text_config(shape, dtype_name, text_layers),
        "vision_config": vision_config(shape, dtype_name),
    }


def text_config(shape: Shape, dtype_name: str, text_layers: int | None) -> dict:
    vocabulary = shape.vocabulary
    layers = dict(shape.text)
    if text_layers is not None:
        layers["num_hidden_layers"] = text_layers
        cross_attention_layers = shape.text["cross_attention_layers"]
        layers["cross_attention_layers"] = [i for i in cross_attention_layers if i < text_layers]
    return {
        "model_type": "mllama_text_model",
        **layers,
        "vocab_size": vocabulary.text_vocab_size,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "initializer_range": INIT_STD,
        "dropout": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": vocabulary.id_of("<|begin_of_text|>"),
        "eos_token_id": stop_token_ids(vocabulary),
        "pad_token_id": vocabulary.id_of("<|finetune_right_pad_id|>"),
        # transformers 5 reads rope_parameters; 4.x reads rope_scaling and rope_theta.
        "rope_parameters": {**LLAMA3_ROPE_SCALING, "rope_theta": ROPE_THETA},
        "rope_scaling": dict(LLAMA3_ROPE_SCALING),
        "rope_theta": ROPE_THETA,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }


def vision_config(shape: Shape, dtype_name: str) -> dict:
    return {
        "model_type": "mllama_vision_model",
        **shape.vision,
        "hidden_act": "gelu",
        "num_channels": 3,
        "norm_eps": 1e-05,
        "initializer_range": INIT_STD,
        "supported_aspect_ratios": DEFAULT_ASPECT_RATIOS,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }


def stop_token_ids(vocabulary: Vocabulary) -> list[int]:
    return [vocabulary.id_of(token) for token in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]


def generation_config(vocabulary: Vocabulary) -> dict:
    """The Instruct model's sampling defaults, with this vocabulary's ids."""
    return {
        "bos_token_id": vocabulary.id_of("<|begin_of_text|>"),
        "do_sample": True,
        "eos_token_id": stop_token_ids(vocabulary),
        "pad_token_id": vocabulary.id_of("<|finetune_right_pad_id|>"),
        "temperature": 0.6,
        "top_p": 0.9,
    }


def preprocessor_config(shape: Shape) -> dict:
    image_size = shape.vision["image_size"]
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "MllamaImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_image_tiles": shape.vision["max_num_tiles"],
        "processor_class": "MllamaProcessor",
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        # Without this, transformers 4.x returns token_type_ids, which Mllama's forward rejects.
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


# --- Tokenizer ----------------------------------------------------------------------------------


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


# --- Weights ------------------------------------------------------------------------------------


def plan_checkpoint(
    shape_name: str, dtype: str | None = None, text_layers: int | None = None, quantize: str | None = None
) -> CheckpointPlan:
    """The config and the name, shape and fill of every weight tensor, without allocating any."""
    shape = SHAPES[shape_name]
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {list(QUANTIZATIONS)}, not {quantize!r}")
    dtype_name = dtype or ("bfloat16" if quantize else shape.default_dtype)
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype_name!r}")
    if quantize and dtype_name != "bfloat16":
        raise ValueError(f"--quantize {quantize} keeps the unquantized weights in bfloat16, not {dtype_name}")
    layer_count = shape.text["num_hidden_layers"]
    if text_layers is not None and not 1 <= text_layers <= layer_count:
        raise ValueError(f"text_layers must be between 1 and {layer_count}")
    config = model_config(shape, dtype_name, text_layers)
    if quantize:
        config["quantization_config"] = copy.deepcopy(NF4_QUANTIZATION_CONFIG)
    specs = tensor_specs(config, quantize is not None)
    return CheckpointPlan(shape_name, config, specs, DTYPES[dtype_name], quantize)


def tensor_specs(config: dict, quantize: bool = False) -> list[TensorSpec]:
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    # MllamaConfig rewrites the rope dicts it is given; keep the plan's config as written.
    with torch.device("meta"):
        model = MllamaForConditionalGeneration(MllamaConfig(**copy.deepcopy(config)))
    specs = []
    for module_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        quantized_module = quantize and is_quantized_module(module_name, module)
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            fill = initial_fill(name, is_norm)
            quantized = quantized_module and name.endswith(".weight")
            specs.append(TensorSpec(published_name(name), tuple(param.shape), fill, quantized))
    return specs


def is_quantized_module(module_name: str, module: torch.nn.Module) -> bool:
    """transformers 5's rule: every nn.Linear, unless a skipped name starts or ends its path."""
    skipped = any(
        module_name == skip or module_name.startswith(skip + ".") or module_name.endswith(skip)
        for skip in UNQUANTIZED_MODULES
    )
    return type(module) is torch.nn.Linear and not skipped


def published_name(name: str) -> str:
    for current, published in PUBLISHED_NAME_PREFIXES:
        if name.startswith(current):
            return published + name.removeprefix(current)
    raise ValueError(f"no published name for {name}")


def initial_fill(name: str, is_norm: bool) -> str:
    if name.endswith(".bias"):
        return "zeros"
    return "ones" if is_norm else "normal"


def planned_entries(tensor: TensorSpec, dtype: torch.dtype) -> list[StoredTensor]:
    """What a file holds for `tensor`, in the order written. A 4-bit weight is stored as bitsandbytes'
    Linear4bit saves it: the packed weight, then its QuantState.as_dict(packed=True); the quant state's
    JSON length is not known before quantizing, so it is planned at its longest."""
    if not tensor.quantized:
        return [StoredTensor(tensor.name, SAFETENSORS_DTYPES[dtype], tensor.shape)]
    blocks = -(-tensor.numel // NF4_BLOCKSIZE)
    return [
        StoredTensor(tensor.name, "U8", (-(-tensor.numel // 2), 1)),  # two 4-bit codes a byte
        StoredTensor(f"{tensor.name}.absmax", "U8", (blocks,)),
        StoredTensor(f"{tensor.name}.quant_map", "F32", (16,)),
        StoredTensor(f"{tensor.name}.nested_absmax", "F32", (-(-blocks // NESTED_BLOCKSIZE),)),
        StoredTensor(f"{tensor.name}.nested_quant_map", "F32", (256,)),
        StoredTensor(f"{tensor.name}.quant_state.bitsandbytes__nf4", "U8", (quant_state_max_length(tensor),)),
    ]


def quant_state_max_length(tensor: TensorSpec) -> int:
    """bitsandbytes packs the quant state's non-tensor fields as JSON; only the nested offset, a float,
    varies in length between tensors of one shape."""
    fields = {
        "quant_type": "nf4",
        "blocksize": NF4_BLOCKSIZE,
        "dtype": "bfloat16",
        "shape": list(tensor.shape),
        "nested_blocksize": NESTED_BLOCKSIZE,
        "nested_dtype": "float32",
        "nested_offset": 0.0,
    }
    return len(json.dumps(fields)) - len(repr(0.0)) + FLOAT_REPR_MAX_LENGTH


def stored_bytes(tensor: TensorSpec, dtype: torch.dtype) -> int:
    return sum(entry.nbytes for entry in planned_entries(tensor, dtype))


def group_into_shards(
    tensors: list[TensorSpec], dtype: torch.dtype, max_bytes: int
) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    shard_bytes = 0
    for tensor in tensors:
        size = stored_bytes(tensor, dtype)
        if shards[-1] and shard_bytes + size > max_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(tensor)
        shard_bytes += size
    return shards


def shard_file_names(shard_count: int) -> list[str]:
    if shard_count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{shard_count:05d}.safetensors" for i in range(1, shard_count + 1)]


def chunk_seed(seed: int, tensor_name: str, chunk_index: int) -> int:
    digest = hashlib.sha256(f"{seed}/{tensor_name}/{chunk_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def chunk_count(tensor: TensorSpec) -> int:
    return max(1, -(-tensor.numel // CHUNK_ELEMENTS))


def chunk_values(tensor: TensorSpec, chunk_index: int, seed: int, device: str) -> torch.Tensor:
    """float32 values of one chunk; torch's CUDA generator draws other numbers than its CPU one."""
    start = chunk_index * CHUNK_ELEMENTS
    count = min(CHUNK_ELEMENTS, tensor.numel - start)
    if tensor.fill == "normal":
        generator = torch.Generator(device).manual_seed(chunk_seed(seed, tensor.name, chunk_index))
        return torch.empty(count, device=device).normal_(0.0, INIT_STD, generator=generator)
    return torch.full((count,), 1.0 if tensor.fill == "ones" else 0.0, device=device)


def make_chunk(
    tensor: TensorSpec, chunk_index: int, seed: int, dtype: torch.dtype, device: str = "cpu"
) -> memoryview:
    return tensor_bytes(chunk_values(tensor, chunk_index, seed, device).to(dtype))


def make_chunk_to_quantize(
    tensor: TensorSpec, chunk_index: int, seed: int, dtype: torch.dtype, device: str
) -> torch.Tensor:
    return chunk_values(tensor, chunk_index, seed, device).to(dtype)


def tensor_bytes(values: torch.Tensor) -> memoryview:
    return memoryview(values.cpu().contiguous().view(torch.uint8).numpy())


def generated_chunks(tensors: list[TensorSpec], seed: int, dtype: torch.dtype, workers: int, device: str):
    """Yield (tensor, chunk) for every chunk of every tensor in order, generated by a few threads ahead.
    A chunk is bytes to write, or, for a tensor to quantize, values left on `device`."""
    jobs = [(t, i) for t in tensors for i in range(chunk_count(t))]
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for tensor, index in jobs:
            make = make_chunk_to_quantize if tensor.quantized else make_chunk
            pending.append((tensor, pool.submit(make, tensor, index, seed, dtype, device)))
            if len(pending) > 2 * workers:
                tensor, future = pending.popleft()
                yield tensor, future.result()
        while pending:
            tensor, future = pending.popleft()
            yield tensor, future.result()


def assemble(tensor: TensorSpec, chunks) -> torch.Tensor:
    """One tensor from its chunks, copied into place as they come, so they need not all be held."""
    whole = None
    start = 0
    for chunk in chunks:
        if whole is None:
            whole = torch.empty(tensor.numel, dtype=chunk.dtype, device=chunk.device)
        whole[start : start + chunk.numel()] = chunk
        start += chunk.numel()
    return whole.view(tensor.shape)


def quantize_nf4(tensor: TensorSpec, weight: torch.Tensor) -> list[tuple[StoredTensor, torch.Tensor]]:
    """The weight as bitsandbytes' Linear4bit saves it (see Linear4bit._save_to_state_dict)."""
    from bitsandbytes.functional import quantize_4bit

    packed, quant_state = quantize_4bit(
        weight, blocksize=NF4_BLOCKSIZE, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
    )
    parts = {tensor.name: packed}
    parts.update({f"{tensor.name}.{key}": value for key, value in quant_state.as_dict(packed=True).items()})
    return [
        (StoredTensor(name, SAFETENSORS_DTYPES[value.dtype], tuple(value.shape)), value)
        for name, value in parts.items()
    ]


def check_planned(planned: list[StoredTensor], written: list[StoredTensor]) -> None:
    """bitsandbytes stored what was planned; the quant state's JSON may be shorter than planned."""

    def fits(plan: StoredTensor, entry: StoredTensor) -> bool:
        if (plan.name, plan.dtype) != (entry.name, entry.dtype):
            return False
        if plan.name.endswith(".quant_state.bitsandbytes__nf4"):
            return len(entry.shape) == 1 and entry.shape[0] <= plan.shape[0]
        return plan.shape == entry.shape

    if len(planned) != len(written) or not all(map(fits, planned, written)):
        raise RuntimeError(f"bitsandbytes stored {written}, not the planned {planned}")


def safetensors_header(entries: list[StoredTensor], length: int | None = None) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 or to `length` bytes."""
    header_entries: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        end = offset + entry.nbytes
        header_entries[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    header = json.dumps(header_entries, separators=(",", ":")).encode()
    padded_length = len(header) + (-len(header) % 8) if length is None else length - 8
    if padded_length < len(header):
        raise RuntimeError(
            f"the safetensors header needs {len(header)} bytes, more than the {padded_length} reserved"
        )
    header += b" " * (padded_length - len(header))
    return struct.pack("<Q", len(header)) + header


def write_safetensors(
    path: Path, tensors: list[TensorSpec], seed: int, dtype: torch.dtype, workers: int, device: str = "cpu"
) -> list[StoredTensor]:
    """Stream a safetensors file: only a few chunks, and the one tensor being quantized, are held in memory.
    The header goes in last, into the room its planned (longest) form takes."""
    reserved = len(safetensors_header([e for tensor in tensors for e in planned_entries(tensor, dtype)]))
    written: list[StoredTensor] = []
    with open(path, "wb") as file:
        file.seek(reserved)
        for tensor, group in groupby(
            generated_chunks(tensors, seed, dtype, workers, device), key=itemgetter(0)
        ):
            chunks = (chunk for _, chunk in group)
            if tensor.quantized:
                parts = quantize_nf4(tensor, assemble(tensor, chunks))
                check_planned(planned_entries(tensor, dtype), [entry for entry, _ in parts])
                for entry, values in parts:
                    written.append(entry)
                    file.write(tensor_bytes(values))
            else:
                written.extend(planned_entries(tensor, dtype))
                for chunk in chunks:
                    file.write(chunk)
        file.seek(0)
        file.write(safetensors_header(written, reserved))
    return written


def write_weights(
    plan: CheckpointPlan, output: Path, seed: int, max_shard_bytes: int, device: str = "cpu"
) -> None:
    shards = group_into_shards(plan.tensors, plan.dtype, max_shard_bytes)
    names = shard_file_names(len(shards))
    workers = os.cpu_count() or 1
    weight_map: dict[str, str] = {}
    total_size = 0
    for index, (name, tensors) in enumerate(zip(names, shards), start=1):
        print(f"writing {name} ({index}/{len(shards)})", file=sys.stderr, flush=True)
        written = write_safetensors(output / name, tensors, seed, plan.dtype, workers, device)
        weight_map.update({entry.name: name for entry in written})
        total_size += sum(entry.nbytes for entry in written)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        write_json(output / "model.safetensors.index.json", index)


# --- Output folder ------------------------------------------------------------------------------


def existing_weight_files(output: Path) -> list[Path]:
    return sorted(output.glob("model*.safetensors")) + sorted(output.glob("model.safetensors.index.json"))


def check_free_space(output: Path, needed_bytes: int) -> None:
    reusable = sum(path.stat().st_size for path in existing_weight_files(output))
    free = shutil.disk_usage(output).free + reusable
    if free < needed_bytes:
        raise InsufficientSpaceError(
            f"{output} has {free / 1e9:.1f} GB free but the weights need {needed_bytes / 1e9:.1f} GB; "
            "free some space, pick another --output, or write fewer layers with --text-layers"
        )


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text_files(plan: CheckpointPlan, output: Path) -> None:
    shape = SHAPES[plan.shape_name]
    write_json(output / "config.json", plan.config)
    write_json(output / "generation_config.json", generation_config(shape.vocabulary))
    write_json(output / "preprocessor_config.json", preprocessor_config(shape))
    write_json(output / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    write_json(output / "tokenizer_config.json", tokenizer_config())
    build_tokenizer(shape.vocabulary).save(str(output / "tokenizer.json"), pretty=True)


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU")


def build_checkpoint(
    shape: str,
    output: str | os.PathLike,
    seed: int = 0,
    dtype: str | None = None,
    text_layers: int | None = None,
    config_only: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    quantize: str | None = None,
    device: str = "cpu",
) -> Path:
    """Write a random-weight checkpoint of `shape` ("tiny", "11b", "90b") into `output`; return it.
    `quantize="nf4"` writes it pre-quantized to bitsandbytes 4-bit; `device="cuda"` generates on the GPU."""
    plan = plan_checkpoint(shape, dtype, text_layers, quantize)
    if not config_only:
        check_device(device)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    print(f"{plan.summary()} -> {output}", file=sys.stderr, flush=True)
    if not config_only:
        check_free_space(output, plan.weight_bytes)
        for stale in existing_weight_files(output):
            stale.unlink()
    write_text_files(plan, output)
    if not config_only:
        write_weights(plan, output, seed, max_shard_bytes, device)
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: float32 for unquantized tiny, bfloat16 otherwise"
    )
    parser.add_argument(
        "--text-layers", type=int, metavar="N", help="keep only the first N text decoder layers"
    )
    parser.add_argument("--config-only", action="store_true", help="write everything but the weights")
    parser.add_argument(
        "--quantize", choices=QUANTIZATIONS, help="write the checkpoint pre-quantized to bitsandbytes 4-bit"
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="cpu", help="where to generate (and quantize) the weights"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        build_checkpoint(
            args.shape,
            args.output,
            args.seed,
            args.dtype,
            args.text_layers,
            args.config_only,
            quantize=args.quantize,
            device=args.device,
        )
    except (InsufficientSpaceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
