"""The static decoder's element-wise work as a few Triton kernels: norms, residual adds, rotary, SiLU.

A decoding step is replayed as one CUDA graph, so what its small element-wise work costs is the number
of kernels, not their bytes: transformers' RMSNorm is about eight kernels, rotary about ten for q and k,
and the KV cache takes two scatters. Each function here is one kernel with the same arithmetic as the
eager modules it replaces, down to the rounding: every intermediate result eager torch rounds to the
tensor's dtype is rounded here too, in float32 registers, so bfloat16 results match eager ones but for
the order of a row's sum and the last bits of exp and rsqrt.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check
them on the CPU.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton comes with CUDA builds of torch; CPU-only installs may lack it
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _rounded(x, dtype: tl.constexpr):
        """x (float32) rounded to `dtype` (to nearest, ties to even), as eager torch leaves an operation's result,
        kept in float32. bfloat16 is rounded on the bits: Triton's interpreter truncates in `.to(tl.bfloat16)`."""
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            return bits.to(tl.float32, bitcast=True)
        elif dtype == tl.float16:
            return x.to(tl.float16).to(tl.float32)
        else:
            return x

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, delta_ptr, weight_ptr, sum_ptr, out_ptr, n, eps, ADD: tl.constexpr, BLOCK: tl.constexpr
    ):
        """One row: out = weight * (x * rsqrt(mean(x²) + eps)).to(x's dtype), with x = x + delta first if ADD."""
        row = tl.program_id(0).to(tl.int64)
        columns = tl.arange(0, BLOCK)
        ok = columns < n
        dtype: tl.constexpr = x_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * n + columns, mask=ok, other=0.0).to(tl.float32)
        if ADD:
            x = _rounded(x + tl.load(delta_ptr + row * n + columns, mask=ok, other=0.0).to(tl.float32), dtype)
            tl.store(sum_ptr + row * n + columns, x.to(dtype), mask=ok)
        variance = tl.sum(x * x, axis=0) / n
        normed = _rounded(x * tl.rsqrt(variance + eps), dtype)
        weight = tl.load(weight_ptr + columns, mask=ok, other=0.0).to(tl.float32)
        out_dtype: tl.constexpr = out_ptr.dtype.element_ty
        tl.store(out_ptr + row * n + columns, _rounded(weight * normed, out_dtype).to(out_dtype), mask=ok)

    @triton.jit
    def _rotated(first, second, cos_first, cos_second, sin_first, sin_second, dtype: tl.constexpr):
        """transformers' x * cos + rotate_half(x) * sin on one head's two halves, rounded as eager torch rounds."""
        rotated_first = _rounded(_rounded(first * cos_first, dtype) + _rounded(-second * sin_first, dtype), dtype)
        rotated_second = _rounded(_rounded(second * cos_second, dtype) + _rounded(first * sin_second, dtype), dtype)
        return rotated_first, rotated_second

    @triton.jit
    def _rotary_and_store_kernel(
        query_ptr,
        key_ptr,
        value_ptr,
        cos_ptr,
        sin_ptr,
        keys_ptr,
        values_ptr,
        position_ptr,
        out_ptr,
        query_stride,
        key_stride,
        value_stride,
        angle_stride,
        max_tokens,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HALF: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One (slot, head): rotate the query head into out; the first KV_HEADS programs also rotate their key
        head and write it and the value head into the caches at the slot's position."""
        slot = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        d = tl.arange(0, BLOCK)
        ok = d < HALF
        dtype: tl.constexpr = query_ptr.dtype.element_ty
        angles = slot * angle_stride + d
        cos_first = tl.load(cos_ptr + angles, mask=ok, other=0.0).to(tl.float32)
        cos_second = tl.load(cos_ptr + angles + HALF, mask=ok, other=0.0).to(tl.float32)
        sin_first = tl.load(sin_ptr + angles, mask=ok, other=0.0).to(tl.float32)
        sin_second = tl.load(sin_ptr + angles + HALF, mask=ok, other=0.0).to(tl.float32)

        query = query_ptr + slot * query_stride + head * 2 * HALF + d
        first, second = _rotated(
            tl.load(query, mask=ok, other=0.0).to(tl.float32),
            tl.load(query + HALF, mask=ok, other=0.0).to(tl.float32),
            cos_first,
            cos_second,
            sin_first,
            sin_second,
            dtype,
        )
        out = out_ptr + (slot * HEADS + head) * 2 * HALF + d
        tl.store(out, first.to(dtype), mask=ok)
        tl.store(out + HALF, second.to(dtype), mask=ok)

        if head < KV_HEADS:
            key = key_ptr + slot * key_stride + head * 2 * HALF + d
            first, second = _rotated(
                tl.load(key, mask=ok, other=0.0).to(tl.float32),
                tl.load(key + HALF, mask=ok, other=0.0).to(tl.float32),
                cos_first,
                cos_second,
                sin_first,
                sin_second,
                dtype,
            )
            position = tl.load(position_ptr + slot)
            cached = ((slot * KV_HEADS + head) * max_tokens + position) * 2 * HALF + d
            tl.store(keys_ptr + cached, first.to(dtype), mask=ok)
            tl.store(keys_ptr + cached + HALF, second.to(dtype), mask=ok)
            value = value_ptr + slot * value_stride + head * 2 * HALF + d
            tl.store(values_ptr + cached, tl.load(value, mask=ok), mask=ok)
            tl.store(values_ptr + cached + HALF, tl.load(value + HALF, mask=ok), mask=ok)

    @triton.jit
    def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, gate_stride, up_stride, BLOCK: tl.constexpr):
        """One block of one row: silu(gate) * up, silu rounded to the dtype before the product as eager torch does."""
        row = tl.program_id(0).to(tl.int64)
        columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = columns < n
        dtype: tl.constexpr = gate_ptr.dtype.element_ty
        gate = tl.load(gate_ptr + row * gate_stride + columns, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + row * up_stride + columns, mask=ok, other=0.0).to(tl.float32)
        silu = _rounded(gate / (1.0 + tl.exp(-gate)), dtype)
        tl.store(out_ptr + row * n + columns, _rounded(silu * up, dtype).to(dtype), mask=ok)


SILU_BLOCK = 1024


def _warps(block: int) -> int:
    return min(max(block // 512, 1), 16)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim], contiguous (a copy only if it was not)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def _norm(hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    rows = _rows(hidden)
    count, n = rows.shape
    out = torch.empty(count, n, dtype=torch.promote_types(weight.dtype, hidden.dtype), device=hidden.device)
    total = torch.empty_like(rows) if delta is not None else rows
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(count,)](
        rows,
        _rows(delta) if delta is not None else rows,
        weight,
        total,
        out,
        n,
        eps,
        ADD=delta is not None,
        BLOCK=block,
        num_warps=_warps(block),
    )
    return total.view(hidden.shape), out.view(hidden.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' MllamaTextRMSNorm over x's last dimension: the variance and the scaling in float32, the
    result cast to x's dtype and then multiplied by `weight` (in the two dtypes' common type)."""
    return _norm(x, None, weight, eps)[1]


def add_rms_norm(
    hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden + delta, rms_norm(hidden + delta)): a residual add fused with the norm after it. hidden and delta
    have one shape and one dtype; the sum is rounded to it as eager torch's add is."""
    if delta.shape != hidden.shape or delta.dtype != hidden.dtype:
        raise ValueError(f"add_rms_norm: delta {delta.dtype} {tuple(delta.shape)} is not like hidden's")
    return _norm(hidden, delta, weight, eps)


def rotary_and_store(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys_cache: torch.Tensor,
    values_cache: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Llama rotary (transformers' apply_rotary_pos_emb) on one new token a slot, and the cache update.

    query, key, value: the projections' outputs, [slots, 1, heads × head_dim] (the last dimension contiguous);
    cos, sin: the rotary embedding's, [slots, 1, head_dim]; the caches: [slots, kv_heads, max_tokens, head_dim],
    contiguous; position: [slots] on the device (read by the kernel, so a CUDA graph can replay it). Writes the
    rotated key and the value at each slot's position and returns the rotated query as [slots, heads, 1,
    head_dim], the layout scaled_dot_product_attention takes.
    """
    slots, kv_heads, max_tokens, head_dim = keys_cache.shape
    heads = query.shape[-1] // head_dim
    if not (keys_cache.is_contiguous() and values_cache.is_contiguous()):
        raise ValueError("rotary_and_store: the caches must be contiguous")
    if head_dim % 2 or heads < kv_heads:
        raise ValueError(f"rotary_and_store: {heads} heads of {head_dim} over {kv_heads} key/value heads")
    query, key, value, cos, sin = (_unit_stride_rows(tensor, slots) for tensor in (query, key, value, cos, sin))
    if cos.stride(0) != sin.stride(0):
        raise ValueError("rotary_and_store: cos and sin must be laid out alike")
    out = torch.empty(slots, heads, 1, head_dim, dtype=query.dtype, device=query.device)
    half = head_dim // 2
    _rotary_and_store_kernel[(slots, heads)](
        query,
        key,
        value,
        cos,
        sin,
        keys_cache,
        values_cache,
        position,
        out,
        query.stride(0),
        key.stride(0),
        value.stride(0),
        cos.stride(0),
        max_tokens,
        HEADS=heads,
        KV_HEADS=kv_heads,
        HALF=half,
        BLOCK=triton.next_power_of_2(half),
        num_warps=1,
    )
    return out


def _unit_stride_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x as [rows, rest] with its last dimension contiguous (rows may be apart, as in a split's parts)."""
    x = x.reshape(rows, -1)
    return x if x.stride(-1) == 1 else x.contiguous()


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, as the MLP's `act_fn(gate) * up` with a SiLU activation; gate and up alike in shape."""
    n = gate.shape[-1]
    count = gate.numel() // n
    gate_rows, up_rows = (_unit_stride_rows(x, count) for x in (gate, up))
    out = torch.empty(count, n, dtype=gate.dtype, device=gate.device)
    block = min(SILU_BLOCK, triton.next_power_of_2(n))
    _silu_mul_kernel[(count, triton.cdiv(n, block))](
        gate_rows, up_rows, out, n, gate_rows.stride(0), up_rows.stride(0), BLOCK=block, num_warps=_warps(block)
    )
    return out.view(gate.shape)
