"""The static decoder's fused element-wise kernels compute what the eager modules they replace compute.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported,
hence a subprocess): each kernel against transformers' own MllamaTextRMSNorm, apply_rotary_pos_emb and
the cache scatter, and a whole fused decoding step of the tiny model against the eager step. On a GPU
(marker gpu) the compiled kernels, captured in the decoder's CUDA graph, against the eager step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("triton", reason="the fused kernels need the triton package (installed with vlmkit[test])")
REPO = Path(__file__).resolve().parents[2]

KERNELS_CHECK = textwrap.dedent("""
    import json, torch
    from transformers.activations import ACT2FN
    from transformers.models.mllama.modeling_mllama import MllamaTextRMSNorm, apply_rotary_pos_emb
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig
    from transformers.models.mllama.modeling_mllama import MllamaRotaryEmbedding
    from inference.backends.decoder_kernels import add_rms_norm, rms_norm, rotary_and_store, silu_mul

    def error(got, expected):
        return float((got.float() - expected.float()).abs().max() / expected.float().abs().max())

    def differing(got, expected):
        return float((got != expected).float().mean())

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    norms, rotary, silu = [], [], []
    for dtype in (torch.float32, torch.bfloat16):
        for rows, size in ((3, 64), (2, 100), (4, 16)):  # 100: not a power of two; 16: a q_norm's head_dim
            norm = MllamaTextRMSNorm(size, eps=1e-5).to(dtype)
            norm.weight.data.normal_()
            hidden, delta = (torch.randn(rows, 1, size).to(dtype) for _ in range(2))
            total, normed = add_rms_norm(hidden, delta, norm.weight, 1e-5)
            alone = rms_norm(hidden, norm.weight, 1e-5)
            norms.append({"dtype": str(dtype), "size": size, "dtypes": [str(t.dtype) for t in (alone, total, normed)],
                          "shapes": [list(t.shape) for t in (alone, total, normed)],
                          "norm": error(alone, norm(hidden)), "norm_differing": differing(alone, norm(hidden)),
                          "sum_differing": differing(total, hidden + delta),
                          "add_norm": error(normed, norm(hidden + delta)),
                          "add_norm_differing": differing(normed, norm(hidden + delta))})

        slots, heads, kv_heads, head_dim, max_tokens = 3, 4, 2, 16, 8
        config = MllamaTextConfig(hidden_size=heads * head_dim, num_attention_heads=heads,
                                  num_key_value_heads=kv_heads, rope_scaling={"rope_type": "default"})
        position = torch.tensor([0, 5, 7])
        # q, k and v as the stacked projection hands them over: parts of one row, not contiguous
        stacked = torch.randn(slots, 1, (heads + 2 * kv_heads) * head_dim).to(dtype)
        query, key, value = stacked.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        cos, sin = MllamaRotaryEmbedding(config)(stacked, position.view(slots, 1))
        keys, values = (torch.randn(slots, kv_heads, max_tokens, head_dim).to(dtype) for _ in range(2))
        expected_keys, expected_values = keys.clone(), values.clone()
        heads_first = [t.view(slots, 1, -1, head_dim).transpose(1, 2) for t in (query, key, value)]
        expected_query, expected_key = apply_rotary_pos_emb(heads_first[0], heads_first[1], cos, sin)
        where = position.view(slots, 1, 1, 1).expand(-1, kv_heads, 1, head_dim)
        expected_keys.scatter_(2, where, expected_key)
        expected_values.scatter_(2, where, heads_first[2])
        untouched = torch.ones(slots, max_tokens, dtype=torch.bool)
        untouched[torch.arange(slots), position] = False
        original_keys, original_values = keys.clone(), values.clone()
        got = rotary_and_store(query, key, value, cos, sin, keys, values, position)
        rotary.append({"dtype": str(dtype), "shape": list(got.shape), "out_dtype": str(got.dtype),
                       "query": error(got, expected_query), "query_differing": differing(got, expected_query),
                       "keys": error(keys, expected_keys), "keys_differing": differing(keys, expected_keys),
                       "values_equal": bool(torch.equal(values, expected_values)),
                       "untouched_equal": bool(torch.equal(keys.transpose(1, 2)[untouched],
                                                           original_keys.transpose(1, 2)[untouched])
                                               and torch.equal(values.transpose(1, 2)[untouched],
                                                               original_values.transpose(1, 2)[untouched]))})

        for rows, size in ((3, 100), (2, 1500)):  # 1500: more than one block of a row
            gate, up = torch.randn(rows, 1, 2 * size).mul(3).to(dtype).split(size, dim=-1)
            expected = ACT2FN["silu"](gate) * up
            got = silu_mul(gate, up)
            silu.append({"dtype": str(dtype), "size": size, "shape": list(got.shape), "out_dtype": str(got.dtype),
                         "error": error(got, expected), "differing": differing(got, expected)})
    print(json.dumps({"norms": norms, "rotary": rotary, "silu": silu}))
""")

DECODER_CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tests.service.test_decoder_kernels import fused_against_eager
    print(json.dumps(fused_against_eager(Path(sys.argv[1]), "cpu", sys.argv[2])))
""")


def interpreted(script: str, *arguments: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kernels_run() -> dict:
    return interpreted(KERNELS_CHECK)


# float32: only the order of a row's sum (and rsqrt's and exp's last bits) differ from eager torch.
# bfloat16: every intermediate rounding is eager torch's, so results are equal but for a rare last bit.
FLOAT32_ERROR = 1e-5
BFLOAT16_ERROR = 8e-3
BFLOAT16_DIFFERING = 0.02


def test_rms_norm_and_residual_add_match_transformers_norm(kernels_run):
    for result in kernels_run["norms"]:
        assert result["dtypes"] == [result["dtype"]] * 3, result
        assert all(shape[1:] == [1, result["size"]] for shape in result["shapes"]), result
        assert result["sum_differing"] == 0, result  # the residual add rounds exactly as eager torch's
        if result["dtype"] == "torch.float32":
            assert result["norm"] < FLOAT32_ERROR and result["add_norm"] < FLOAT32_ERROR, result
        else:
            assert result["norm"] < BFLOAT16_ERROR and result["add_norm"] < BFLOAT16_ERROR, result
            assert result["norm_differing"] < BFLOAT16_DIFFERING, result
            assert result["add_norm_differing"] < BFLOAT16_DIFFERING, result


def test_rotary_and_store_matches_transformers_rotary_and_the_cache_scatter(kernels_run):
    for result in kernels_run["rotary"]:
        assert result["shape"] == [3, 4, 1, 16] and result["out_dtype"] == result["dtype"], result
        assert result["values_equal"] and result["untouched_equal"], result
        if result["dtype"] == "torch.float32":
            assert result["query"] < FLOAT32_ERROR and result["keys"] < FLOAT32_ERROR, result
        else:
            assert result["query_differing"] == 0 and result["keys_differing"] == 0, result


def test_silu_mul_matches_the_mlp_activation_times_up(kernels_run):
    for result in kernels_run["silu"]:
        assert result["shape"][1:] == [1, result["size"]] and result["out_dtype"] == result["dtype"], result
        if result["dtype"] == "torch.float32":
            assert result["error"] < FLOAT32_ERROR, result
        else:
            assert result["error"] < BFLOAT16_ERROR and result["differing"] < BFLOAT16_DIFFERING, result


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_interpreted_fused_step_gives_the_eager_steps_logits(tiny_model_dir, dtype):
    results = interpreted(DECODER_CHECK, str(tiny_model_dir), dtype)
    check_fused_against_eager(results, dtype)
    assert not any(result["service_fuses"] for result in results)  # the service fuses on CUDA only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_fused_step_in_a_cuda_graph_gives_the_eager_steps_logits(tiny_model_dir, dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    results = fused_against_eager(tiny_model_dir, "cuda", dtype)
    check_fused_against_eager(results, dtype)
    assert all(result["service_fuses"] for result in results)


def check_fused_against_eager(results: list[dict], dtype: str) -> None:
    for result in results:
        assert result["fused_kernels"], result
        if dtype == "float32":
            assert result["same_tokens"] and result["error"] < 1e-4, result
        else:  # a last-bit difference (rsqrt, exp, a sum's order) may flip a near tie of the random model's logits
            assert result["error"] < 3e-2, result


def fused_against_eager(model_dir: Path, device: str, dtype: str, steps: int = 6) -> list[dict]:
    """Decode the same prompts with an eager and a fused decoder over the same model, teacher-forced on the eager
    decoder's greedy tokens; per batch: whether the greedy tokens agree, the largest logit difference relative
    to the largest logit, and whether the service's own decoder fuses. The fused decoder replays a CUDA graph
    where there is one."""
    import torch

    from inference.backends.static_decode import StaticDecoder
    from inference.backends.transformers_backend import TransformersBackend
    from tests.lab.chat import image_message
    from tests.lab.decoding import prompt_for

    backend = TransformersBackend(model_dir, device=device, dtype=dtype, static_cache_tokens=128, max_batch_size=2)
    with_image = prompt_for(backend, [image_message("Describe it.")], Image.new("RGB", (90, 40), (10, 200, 90)))
    text_only = prompt_for(backend, [{"role": "user", "content": "Tell me a story."}])
    results = []
    # two slots, one with an image (cross-attention runs, zeroed for the text slot); one text-only slot (the
    # cross-attention layers are skipped, and the residual add waits across them)
    for batch in ([with_image, text_only], [text_only]):
        decoders = [
            StaticDecoder(
                backend.model,
                128,
                use_cuda_graph=device == "cuda" and fused,
                slots=len(batch),
                projections=backend.projections,
                fused_kernels=fused,
            )
            for fused in (False, True)
        ]
        eager, fused = decoders
        worst, same_tokens = 0.0, True
        with torch.inference_mode():
            for decoder in decoders:
                for slot, prompt in enumerate(batch):
                    inputs = {name: tensor.to(device) for name, tensor in prompt.inputs.items()}
                    if "pixel_values" in inputs:
                        inputs["pixel_values"] = inputs["pixel_values"].to(backend.vision_dtype)
                    decoder.prefill(inputs, slot)
            tokens = [1] * len(batch)
            for _ in range(steps):
                expected, got = eager.step(tokens).clone(), fused.step(tokens).clone()
                worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
                same_tokens &= bool(torch.equal(got.argmax(-1), expected.argmax(-1)))
                tokens = expected.argmax(-1).tolist()
        results.append(
            {
                "slots": len(batch),
                "fused_kernels": fused.fused_kernels,
                "same_tokens": same_tokens,
                "error": worst,
                "service_fuses": backend.decoder.fused_kernels,
            }
        )
    return results


def test_decoder_keeps_the_eager_step_where_the_kernels_cannot_run(tiny_model_dir, caplog):
    """Here (no GPU, no interpreter) launching a Triton kernel fails, as it does on a GPU host without a C
    compiler for Triton's launcher: the decoder says so once and decodes eagerly, with the same logits."""
    import torch

    from inference.backends.static_decode import StaticDecoder
    from inference.backends.transformers_backend import TransformersBackend
    from tests.lab.decoding import prompt_for

    backend = TransformersBackend(tiny_model_dir, device="cpu", static_cache_tokens=128)
    prompt = prompt_for(backend, [{"role": "user", "content": "Tell me a story."}])
    decoder = StaticDecoder(backend.model, 128, use_cuda_graph=False, fused_kernels=True)
    assert decoder.fused_kernels is False
    assert [record.message for record in caplog.records if "fused decoder kernels failed" in record.message] != []
    for each in (decoder, backend.decoder):
        each.prefill(prompt.inputs)
    assert torch.equal(decoder.step([1]), backend.decoder.step([1]))
