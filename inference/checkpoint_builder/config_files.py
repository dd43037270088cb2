"""The JSON files beside the weights: config.json, generation_config.json, preprocessor_config.json,
tokenizer_config.json and the chat template, as the published checkpoints have them."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from inference.checkpoint_builder.shapes import (
    DEFAULT_ASPECT_RATIOS,
    INIT_STD,
    LLAMA3_ROPE_SCALING,
    ROPE_THETA,
    Shape,
    Vocabulary,
)

# Llama 3.2 Vision Instruct's chat template, except that the date no longer comes from strftime_now:
# it is fixed (callers may still pass date_string) so rendered prompts are reproducible.
CHAT_TEMPLATE = files(__package__).joinpath("chat_template.jinja").read_text(encoding="utf-8")


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


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
