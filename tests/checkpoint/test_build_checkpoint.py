"""Tests for inference.checkpoint_builder: the tiny checkpoint is built for real and loaded with
transformers; the 11B and 90B shapes are checked through their plans (no weights written)."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    MllamaForConditionalGeneration,
)

from inference.checkpoint_builder import build_checkpoint, plan_checkpoint
from inference.checkpoint_builder.cli import main
from inference.checkpoint_builder.shapes import BPE_VOCAB_SIZE, LLAMA3_ROPE_SCALING, NAMED_SPECIAL_TOKENS, TEXT_90B

REPO = Path(__file__).resolve().parents[2]
BUILDER_CLI = [sys.executable, "-m", "inference.checkpoint_builder"]


def file_digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def image_chat(image, question="What is in this picture?"):
    content = [{"type": "image", "image": image}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def tokenized_image_chat(processor, image):
    return processor.apply_chat_template(
        image_chat(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint("tiny", tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    return AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture
def red_image():
    return Image.new("RGB", (80, 50), (200, 30, 30))


def test_tiny_build_from_the_command_line_in_another_folder_is_byte_identical_to_one_with_the_same_seed(
    tiny_checkpoint, tmp_path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [*BUILDER_CLI, "--shape", "tiny", "--output", "tiny-here", "--seed", "0"]
    subprocess.run(command, check=True, capture_output=True, cwd=elsewhere)

    output = elsewhere / "tiny-here"
    assert file_digests(output) == file_digests(tiny_checkpoint)
    assert set(file_digests(output)) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.json",
    }


def test_the_wheel_the_deploy_builds_carries_the_chat_template_and_builds_the_same_checkpoint(
    tiny_checkpoint, tmp_path
):
    build_wheel = REPO / "roles" / "python_env" / "files" / "build_wheel.py"
    built = subprocess.run(
        [sys.executable, str(build_wheel), str(REPO), str(tmp_path / "wheels")],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = json.loads(built.stdout)["wheel"]
    with zipfile.ZipFile(wheel) as archive:
        assert "inference/checkpoint_builder/chat_template.jinja" in archive.namelist()
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site), wheel],
        check=True,
        capture_output=True,
    )
    installed = {**os.environ, "PYTHONPATH": str(site)}  # ahead of this checkout's editable install

    where = subprocess.run(
        [sys.executable, "-c", "import inference.checkpoint_builder as b; print(b.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env=installed,
        cwd=tmp_path,
    )
    subprocess.run(
        [*BUILDER_CLI, "--shape", "tiny", "--output", "tiny"],
        check=True,
        capture_output=True,
        env=installed,
        cwd=tmp_path,
    )

    assert Path(where.stdout.strip()).is_relative_to(site)
    assert file_digests(tmp_path / "tiny") == file_digests(tiny_checkpoint)


def test_another_seed_changes_the_weights_and_nothing_else(tiny_checkpoint, tmp_path):
    build_checkpoint("tiny", tmp_path, seed=1)

    first, second = file_digests(tiny_checkpoint), file_digests(tmp_path)
    assert {name for name in first if first[name] != second[name]} == {"model.safetensors"}


def test_image_token_id_equals_the_text_vocab_size(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = AutoConfig.from_pretrained(tiny_checkpoint)

    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    assert image_id == config.text_config.vocab_size == config.image_token_index
    assert len(tokenizer) == image_id + 1


def test_special_tokens_follow_llama_3_2s_order_after_the_bpe_tokens(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)

    ids = tokenizer.convert_tokens_to_ids(list(NAMED_SPECIAL_TOKENS) + ["<|image|>"])
    assert ids == list(range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + 12))
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"


def test_generation_stops_on_end_of_text_eom_and_eot_like_the_real_model(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    generation = GenerationConfig.from_pretrained(tiny_checkpoint)

    stop_tokens = tokenizer.convert_ids_to_tokens(generation.eos_token_id)
    assert stop_tokens == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
    assert tokenizer.convert_ids_to_tokens(generation.bos_token_id) == "<|begin_of_text|>"


def test_an_image_chat_generates_new_tokens(tiny_checkpoint, processor, red_image):
    model = MllamaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = tokenized_image_chat(processor, red_image)

    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)

    prompt_ids = inputs["input_ids"][0].tolist()
    assert prompt_ids.count(processor.tokenizer.bos_token_id) == 1
    assert prompt_ids.count(model.config.image_token_index) == 1
    assert output.shape[1] > len(prompt_ids)


def test_an_image_with_a_system_message_raises_the_templates_error(processor, red_image):
    chat = [{"role": "system", "content": "Be brief."}, *image_chat(red_image)]

    with pytest.raises(jinja2.TemplateError, match="Prompting with images is incompatible with system messages"):
        processor.apply_chat_template(chat, add_generation_prompt=True)


def test_a_text_only_chat_gets_the_system_header_with_a_fixed_date(processor):
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_the_tiny_checkpoint_loads_in_4_bit_on_cpu_and_generates(tiny_checkpoint, processor, red_image):
    # transformers 5 matches skip names from the start of the module path: "vision_model" alone skips nothing.
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["model.vision_model", "model.multi_modal_projector", "lm_head"],
    )
    model = MllamaForConditionalGeneration.from_pretrained(
        tiny_checkpoint, quantization_config=quantization, device_map="cpu"
    )
    inputs = tokenized_image_chat(processor, red_image)

    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert type(model.model.language_model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert type(model.model.vision_model.transformer.layers[0].mlp.fc1) is torch.nn.Linear
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_a_sharded_build_holds_the_same_tensors_as_a_single_file_build(tiny_checkpoint, tmp_path):
    build_checkpoint("tiny", tmp_path, seed=0, max_shard_bytes=600_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())

    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert not (tmp_path / "model.safetensors").exists()
    with safe_open(tiny_checkpoint / "model.safetensors", "pt") as single:
        for name, shard in index["weight_map"].items():
            with safe_open(tmp_path / shard, "pt") as part:
                assert torch.equal(part.get_tensor(name), single.get_tensor(name)), name
        assert set(index["weight_map"]) == set(single.keys())
    assert MllamaForConditionalGeneration.from_pretrained(tmp_path).config.text_config.hidden_size == 64


def test_a_bfloat16_build_has_finite_weights_with_the_intended_spread(tmp_path):
    build_checkpoint("tiny", tmp_path, dtype="bfloat16")

    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        embeddings = weights.get_tensor("language_model.model.embed_tokens.weight")
        norm = weights.get_tensor("language_model.model.norm.weight")
    assert embeddings.dtype == torch.bfloat16
    assert torch.isfinite(embeddings).all()
    assert 0.018 < embeddings.float().std().item() < 0.022
    assert torch.equal(norm, torch.ones_like(norm))
    assert AutoConfig.from_pretrained(tmp_path).text_config.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("shape", "published_parameters", "hidden_size", "layers", "cross_attention_layers"),
    [("11b", 10.6e9, 4096, 40, 8), ("90b", 88.6e9, 8192, 100, 20)],
)
def test_large_shapes_match_the_published_models(
    shape, published_parameters, hidden_size, layers, cross_attention_layers
):
    plan = plan_checkpoint(shape)

    text = plan.config["text_config"]
    assert plan.parameter_count == pytest.approx(published_parameters, rel=0.01)
    assert plan.weight_bytes == 2 * plan.parameter_count
    assert (text["hidden_size"], text["num_hidden_layers"]) == (hidden_size, layers)
    assert len(text["cross_attention_layers"]) == cross_attention_layers
    assert text["vocab_size"] == plan.config["image_token_index"] == 128256
    assert plan.config["vision_config"]["image_size"] == 560


def test_text_layers_truncates_the_model_and_keeps_the_cross_attention_layers_below_it():
    plan = plan_checkpoint("11b", text_layers=4)

    assert plan.config["text_config"]["cross_attention_layers"] == [3]
    text_layer_prefix = "language_model.model.layers."
    layer_numbers = {t.name.split(".")[3] for t in plan.tensors if t.name.startswith(text_layer_prefix)}
    assert layer_numbers == {"0", "1", "2", "3"}
    assert plan.parameter_count < plan_checkpoint("11b").parameter_count / 3


def test_the_11b_config_only_build_puts_special_tokens_at_llama_3_2s_ids(tmp_path):
    build_checkpoint("11b", tmp_path, config_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    expected = {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|finetune_right_pad_id|>": 128004,
        "<|step_id|>": 128005,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_2|>": 128011,
        "<|reserved_special_token_246|>": 128255,
        "<|image|>": 128256,
    }
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert len(tokenizer) == 128257
    assert not list(tmp_path.glob("*.safetensors"))
    assert AutoConfig.from_pretrained(tmp_path).text_config.num_hidden_layers == 40


def test_the_config_carries_llama3_rope_for_transformers_4_and_5(tiny_checkpoint):
    text = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]

    assert text["rope_scaling"] == LLAMA3_ROPE_SCALING
    assert text["rope_theta"] == 500000.0
    assert text["rope_parameters"] == {**LLAMA3_ROPE_SCALING, "rope_theta": 500000.0}
    assert AutoConfig.from_pretrained(tiny_checkpoint).text_config.rope_parameters["rope_type"] == "llama3"


def test_a_build_that_does_not_fit_on_disk_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    small_disk = shutil.disk_usage(tmp_path)._replace(free=10_000_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: small_disk)

    exit_code = main(["--shape", "90b", "--output", str(tmp_path)])

    assert exit_code == 1
    assert "need 177.2 GB" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- Pre-quantized bitsandbytes 4-bit (--quantize nf4) --------------------------------------------


def service_quantization_config() -> BitsAndBytesConfig:
    """The BitsAndBytesConfig TransformersBackend quantizes with at load time (load_in_4bit)."""
    from inference.backends.transformers_backend import UNQUANTIZED_MODULES

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=UNQUANTIZED_MODULES,
    )


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as weights:
        return {name: weights.get_tensor(name) for name in weights.keys()}


@pytest.fixture(scope="module")
def bfloat16_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint("tiny", tmp_path_factory.mktemp("tiny-bf16"), seed=0, dtype="bfloat16")


@pytest.fixture(scope="module")
def nf4_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint("tiny", tmp_path_factory.mktemp("tiny-nf4"), seed=0, quantize="nf4")


@pytest.fixture(scope="module")
def saved_by_transformers(bfloat16_checkpoint, tmp_path_factory) -> Path:
    """The bfloat16 checkpoint quantized by transformers at load time, then saved with save_pretrained."""
    model = MllamaForConditionalGeneration.from_pretrained(
        bfloat16_checkpoint,
        quantization_config=service_quantization_config(),
        dtype=torch.bfloat16,
        device_map="cpu",
    )
    output = tmp_path_factory.mktemp("tiny-nf4-saved")
    model.save_pretrained(output)
    return output


def test_the_nf4_build_holds_exactly_what_transformers_saves_for_the_bfloat16_build_loaded_in_4_bit(
    nf4_checkpoint, saved_by_transformers
):
    built = read_tensors(nf4_checkpoint / "model.safetensors")
    saved = read_tensors(saved_by_transformers / "model.safetensors")

    assert built.keys() == saved.keys()
    assert {name: (t.dtype, t.shape) for name, t in built.items()} == {
        name: (t.dtype, t.shape) for name, t in saved.items()
    }
    assert [name for name in saved if not torch.equal(built[name], saved[name])] == []


def test_the_nf4_build_quantizes_the_language_models_linears_and_keeps_vision_and_lm_head_in_bfloat16(
    nf4_checkpoint,
):
    built = read_tensors(nf4_checkpoint / "model.safetensors")

    down_proj = "language_model.model.layers.0.mlp.down_proj.weight"
    assert (built[down_proj].dtype, built[down_proj].shape) == (torch.uint8, (64 * 128 // 2, 1))
    assert {name.removeprefix(down_proj) for name in built if name.startswith(down_proj)} == {
        "",
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
        ".quant_state.bitsandbytes__nf4",
    }
    quant_state = json.loads(bytes(built[down_proj + ".quant_state.bitsandbytes__nf4"].tolist()))
    assert quant_state | {"nested_offset": None} == {
        "quant_type": "nf4",
        "blocksize": 64,
        "dtype": "bfloat16",
        "shape": [64, 128],
        "nested_blocksize": 256,
        "nested_dtype": "float32",
        "nested_offset": None,
    }
    kept = [
        "language_model.lm_head.weight",
        "multi_modal_projector.weight",
        "vision_model.transformer.layers.0.mlp.fc1.weight",
        "language_model.model.embed_tokens.weight",
    ]
    assert {built[name].dtype for name in kept} == {torch.bfloat16}


def test_the_nf4_config_carries_the_quantization_config_transformers_saves(nf4_checkpoint, saved_by_transformers):
    from inference.backends.transformers_backend import UNQUANTIZED_MODULES

    built = json.loads((nf4_checkpoint / "config.json").read_text())
    saved = json.loads((saved_by_transformers / "config.json").read_text())

    assert built["quantization_config"] == saved["quantization_config"]
    assert built["quantization_config"]["llm_int8_skip_modules"] == UNQUANTIZED_MODULES
    assert built["text_config"]["dtype"] == "bfloat16"


def greedy_answer(backend, image) -> tuple[list[str], int]:
    from inference.backends import SamplingParams

    prompt = backend.prepare(image_chat(image), image)
    pieces: list[str] = []
    params = SamplingParams(max_new_tokens=8, min_new_tokens=8, temperature=0, top_p=1, min_p=0)
    result = backend.generate(prompt, params, pieces.append, lambda: False)
    return pieces, result.completion_tokens


def test_the_service_serves_the_nf4_build_like_the_bfloat16_build_quantized_at_load(
    nf4_checkpoint, bfloat16_checkpoint, red_image
):
    from inference.backends.transformers_backend import TransformersBackend, is_prequantized

    prequantized = TransformersBackend(nf4_checkpoint, device="cpu", dtype="bfloat16")
    quantized_at_load = TransformersBackend(bfloat16_checkpoint, device="cpu", dtype="bfloat16", load_in_4bit=True)

    assert is_prequantized(nf4_checkpoint) and not is_prequantized(bfloat16_checkpoint)
    down_proj = prequantized.model.model.language_model.layers[0].mlp.down_proj
    assert type(down_proj.weight).__name__ == "Params4bit"
    pieces, token_count = greedy_answer(prequantized, red_image)
    assert token_count == 8 and "".join(pieces)
    assert (pieces, token_count) == greedy_answer(quantized_at_load, red_image)


def test_a_sharded_nf4_build_holds_the_same_tensors_as_a_single_file_one_and_loads(nf4_checkpoint, tmp_path):
    build_checkpoint("tiny", tmp_path, seed=0, quantize="nf4", max_shard_bytes=150_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())

    single = read_tensors(nf4_checkpoint / "model.safetensors")
    sharded = {}
    for shard in sorted(set(index["weight_map"].values())):
        sharded.update(read_tensors(tmp_path / shard))
    assert len(set(index["weight_map"].values())) > 1
    assert index["weight_map"].keys() == sharded.keys() == single.keys()
    assert all(torch.equal(sharded[name], single[name]) for name in single)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    model = MllamaForConditionalGeneration.from_pretrained(tmp_path, device_map="cpu")
    assert type(model.model.language_model.layers[0].mlp.down_proj).__name__ == "Linear4bit"


def reported_gigabytes(stderr: str) -> float:
    return float(re.search(r"([\d.]+) GB", stderr).group(1))


def test_the_90b_nf4_config_only_build_reports_the_4_bit_size(tmp_path):
    options = ["--shape", "90b", "--quantize", "nf4", "--config-only", "--output", str(tmp_path)]
    result = subprocess.run([*BUILDER_CLI, *options], check=True, capture_output=True, text=True)

    text = TEXT_90B
    hidden = text["hidden_size"]
    kv_width = text["num_key_value_heads"] * hidden // text["num_attention_heads"]
    # Each decoder layer's q, k, v, o and MLP projections are quantized; embeddings, norms, lm_head
    # and the vision side are not.
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * text["intermediate_size"]
    quantized = text["num_hidden_layers"] * per_layer
    unquantized = plan_checkpoint("90b").parameter_count - quantized
    # Two 4-bit codes a byte and one uint8 absmax per 64 weights; the nested statistics add ~0.05%.
    least = (quantized / 2 + quantized / 64 + 2 * unquantized) / 1e9
    assert least <= reported_gigabytes(result.stderr) <= least * 1.001
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert not list(tmp_path.glob("*.safetensors"))


def test_the_command_line_rejects_an_unknown_quantization(tmp_path):
    options = ["--shape", "tiny", "--quantize", "int3", "--output", str(tmp_path)]
    result = subprocess.run([*BUILDER_CLI, *options], capture_output=True, text=True)

    assert result.returncode == 2
    assert "invalid choice: 'int3'" in result.stderr
    with pytest.raises(ValueError, match="quantize must be one of"):
        plan_checkpoint("tiny", quantize="int3")
    with pytest.raises(ValueError, match="bfloat16"):
        plan_checkpoint("tiny", dtype="float32", quantize="nf4")


def test_the_free_space_check_asks_for_the_4_bit_size(tmp_path, monkeypatch, capsys):
    small_disk = shutil.disk_usage(tmp_path)._replace(free=10_000_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: small_disk)

    exit_code = main(["--shape", "90b", "--quantize", "nf4", "--output", str(tmp_path)])

    assert exit_code == 1
    assert "need 50.2 GB" in capsys.readouterr().err


# --- The layout the builder, the planner and the service share (inference.model_layout) ------------

# Half the widest gap between neighbouring NF4 codes (-1.0 and -0.6962): the most rounding to the nearest
# code can lose, as a fraction of the block's absmax.
NF4_HALF_WIDEST_GAP = (1.0 - 0.6961928009986877) / 2


def test_the_nf4_builds_weights_dequantize_with_bitsandbytes_to_the_bfloat16_builds_within_nf4_rounding(
    nf4_checkpoint, bfloat16_checkpoint
):
    from bitsandbytes.functional import QuantState, dequantize_4bit

    from inference.model_layout import NF4_BLOCKSIZE

    built = read_tensors(nf4_checkpoint / "model.safetensors")
    dense = read_tensors(bfloat16_checkpoint / "model.safetensors")
    quantized = [name for name in built if f"{name}.quant_state.bitsandbytes__nf4" in built]

    assert len(quantized) == 4 * 7  # q, k, v, o and the 3 MLP projections of each of the 4 text layers
    for name in quantized:
        state = QuantState.from_dict(
            {k.removeprefix(name + "."): v for k, v in built.items() if k.startswith(name + ".")},
            device=torch.device("cpu"),
        )
        restored = dequantize_4bit(built[name], state).float()
        original = dense[name].float()
        blocks = original.flatten().view(-1, NF4_BLOCKSIZE)
        # On top: the block's absmax is itself 8-bit (double quantization), the result bfloat16.
        allowed = (NF4_HALF_WIDEST_GAP + 0.01 + 2**-8) * blocks.abs().amax(dim=1, keepdim=True)
        assert restored.shape == original.shape, name
        assert ((restored.flatten().view(-1, NF4_BLOCKSIZE) - blocks).abs() <= allowed).all(), name
        assert (restored - original).abs().mean() < 0.1 * original.abs().mean(), name


def test_the_planners_4_bit_plan_of_the_bfloat16_build_is_the_nf4_builds_size(nf4_checkpoint, bfloat16_checkpoint):
    from inference.planner import breakdown

    planned = breakdown(bfloat16_checkpoint, context=64, bits=4)["weights"]
    built = read_tensors(nf4_checkpoint / "model.safetensors")
    quant_states = [name for name in built if name.endswith(".quant_state.bitsandbytes__nf4")]

    # Only the quant states' JSON differs: the planner counts a typical float offset, a few digits off.
    actual = sum(t.numel() * t.element_size() for t in built.values())
    assert abs(planned - actual) <= 8 * len(quant_states)
