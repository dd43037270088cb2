"""Decode-step attention on one CUDA GPU: SDPA with enable_gqa against the grouped-query form.

The static decoder attends one new token per slot over a masked cache with enable_gqa. The grouped
form (the query heads that share a key/value head as that head's query rows) was meant to keep any
kernel from repeating the cache per query head; on the H100 it measured 3-10x slower (torch sends the
enable_gqa form to a cuDNN flash kernel), so the decoder keeps enable_gqa (docs/lab/speed.md).

Times each for the 11B and 90B head layouts, 1 and 8 slots, self-attention caches of 2048 and 4096
tokens and the 4-tile image's 6404 cross-attention tokens; CUDA graph of 20 calls, median of
10 replays; one JSON line each, with the largest difference between the two outputs.

    python scripts/attention_bench.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from cuda_timing import graph_time


@torch.inference_mode()
def main() -> None:
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}))
    for model, heads in (("11b", 32), ("90b", 64)):
        kv_heads, head_dim = 8, 128
        for slots in (1, 8):
            for length in (2048, 4096, 6404):
                query = torch.randn(slots, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
                keys = torch.randn(slots, kv_heads, length, head_dim, device="cuda", dtype=torch.bfloat16)
                values = torch.randn_like(keys)
                mask = torch.zeros(slots, 1, 1, length, device="cuda", dtype=torch.bfloat16)
                mask[..., length // 2 :] = float("-inf")

                def gqa():
                    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True)

                def grouped():
                    folded = query.view(slots, kv_heads, heads // kv_heads, head_dim)
                    out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask)
                    return out.view(slots, heads, 1, head_dim)

                difference = float((gqa().float() - grouped().float()).abs().max())
                gqa_s, grouped_s = graph_time(gqa), graph_time(grouped)
                print(
                    json.dumps(
                        {
                            "model": model,
                            "slots": slots,
                            "cache_tokens": length,
                            "enable_gqa_us": round(gqa_s * 1e6, 1),
                            "grouped_us": round(grouped_s * 1e6, 1),
                            "speedup": round(gqa_s / grouped_s, 2),
                            "max_abs_difference": difference,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
