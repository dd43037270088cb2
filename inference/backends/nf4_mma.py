"""Up to 8 rows times a bitsandbytes NF4 weight on the tensor cores, in CUDA C++ compiled at run time.

A decoding step (1 to 8 requests) only reads each 4-bit weight; what bounds the product is the work a
weight byte costs. Here a byte costs about four instructions: its two codes become a bfloat16 pair by
one shared-memory load from a 256-entry table of pairs (copied once per lane, so no two lanes of a warp
ever wait for the same bank), one multiply by the block's absmax (a bfloat16 pair: the dequantized value
bitsandbytes' dequantize gives, up to its rounding), and the tensor cores' `mma.m16n8k16` multiplies and
sums them with the rows of x in float32, so there is no per-code multiply-add at all.

A warp takes 16 weight rows; lane (g, t) = (lane / 4, lane % 4) loads 16 consecutive bytes of rows g and
g + 8 (the four lanes of a row read 64 bytes in a run) and feeds them to eight mma's. The dot product does
not care in which order K is summed, so x's columns are fed in the same order as the weight's bytes: the
mma's "k" is a permutation of the physical columns, the same in A and B. The block's warps split K;
the CTA sums them, rounds to bfloat16 and writes. CTAs are persistent (one wave), so each fills its table once.

bitsandbytes' layout as it is. CUDA (sm_80 and newer) only; x in bfloat16.

Chosen by the service with `nf4_tensor_cores: true`, the default (nf4_kernel.decoding_kernels says where).
`scripts/nf4_one_row_bench.py` measured it alone on the H200 (1 and 8 rows, every 11B and 90B shape: right to
bitsandbytes' rounding, 1.2-1.75x faster than the Triton kernel at 8 rows); in the service it made the 90B
decode 13% faster (docs/lab/speed.md).
"""

from __future__ import annotations

import functools
import struct

import torch

from inference.backends import runtime_cuda
from inference.backends.nf4_decode_ptx import NF4_CODE_BOOK, bfloat16_bits
from inference.backends.nf4_parts import NF4Parts
from inference.model_layout import NESTED_BLOCKSIZE

MAX_ROWS = 8  # the mma's N
K_MULTIPLE = 128  # a warp's step along K: 4 lanes x 16 bytes x 2 codes

_SOURCE = r"""
#define WARPS {warps}
#define NESTED {nested}
#define UNROLL {unroll}
#define BYTE_PERMUTE {byte_permute}
#define LANES_TABLE_WORDS (256 * 32)

__device__ __forceinline__ uint4 load_streaming(const void* address) {{
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {{%0, %1, %2, %3}}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(address));
    return v;
}}

__device__ __forceinline__ unsigned int scaled_pair(unsigned int table, unsigned int offset, unsigned int scale) {{
    // The byte's two codes as a bfloat16 pair, times the block's absmax (a bfloat16 pair); -0 keeps a*b exact.
    unsigned int pair;
    asm("ld.shared.u32 %0, [%1];" : "=r"(pair) : "r"(table + offset));
    unsigned int value;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(value) : "r"(pair), "r"(scale), "r"(0x80008000u));
    return value;
}}

__device__ __forceinline__ void word_pairs(unsigned int table, unsigned int word, unsigned int lane4,
                                           unsigned int scale, unsigned int* pairs) {{
    // Byte b of the word at table row b: byte * 128 + lane * 4.
#if BYTE_PERMUTE
    // One byte permute (the byte alone in a word) and one shift-add a byte, from the lane's word of row 0.
    const unsigned int lane_words = table + lane4;
    #pragma unroll
    for (int b = 0; b < 4; ++b) pairs[b] = scaled_pair(lane_words, __byte_perm(word, 0, 0x4440 + b) << 7, scale);
#else
    pairs[0] = scaled_pair(table, ((word << 7) & 0x7f80u) | lane4, scale);
    pairs[1] = scaled_pair(table, ((word >> 1) & 0x7f80u) | lane4, scale);
    pairs[2] = scaled_pair(table, ((word >> 9) & 0x7f80u) | lane4, scale);
    pairs[3] = scaled_pair(table, ((word >> 17) & 0x7f80u) | lane4, scale);
#endif
}}

__device__ __forceinline__ void mma(float* c, unsigned int a0, unsigned int a1, unsigned int a2, unsigned int a3,
                                    unsigned int b0, unsigned int b1) {{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{%0, %1, %2, %3}}, {{%4, %5, %6, %7}}, "
                 "{{%8, %9}}, {{%0, %1, %2, %3}};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}}

__device__ __forceinline__ float block_scale(const void* absmax, const float* absmax_code, const float* nested_absmax,
                                             float absmax_offset, int block) {{
#if NESTED
    const unsigned char q = __ldg(reinterpret_cast<const unsigned char*>(absmax) + block);
    return __ldg(absmax_code + q) * __ldg(nested_absmax + block / {nested_blocksize}) + absmax_offset;
#else
    return __ldg(reinterpret_cast<const float*>(absmax) + block);
#endif
}}

__device__ __forceinline__ unsigned int bfloat16_pair(float value) {{
    unsigned int pair;
    asm("cvt.rn.bf16x2.f32 %0, %1, %1;" : "=r"(pair) : "f"(value));
    return pair;
}}

__device__ __forceinline__ unsigned short to_bfloat16(float value) {{
    unsigned int pair = bfloat16_pair(value);
    return (unsigned short)(pair & 0xffffu);
}}

extern "C" __global__ void __launch_bounds__(WARPS * 32) {name}(
    const unsigned int* __restrict__ x,        // [m, k / 2] bfloat16 pairs
    const unsigned char* __restrict__ weight,  // [n, k / 2] packed codes
    const void* __restrict__ absmax,
    const float* __restrict__ absmax_code,
    const float* __restrict__ nested_absmax,
    float absmax_offset,
    const uint4* __restrict__ lane_table,      // [256 * 32] words: byte v's pair for lane l at v * 32 + l
    unsigned short* __restrict__ out,          // [m, n] bfloat16
    int m,
    int n,
    int k)
{{
    __shared__ __align__(16) unsigned int table[LANES_TABLE_WORDS];
    __shared__ float partial[WARPS][32][4];
    for (int i = threadIdx.x; i < LANES_TABLE_WORDS / 4; i += WARPS * 32)
        reinterpret_cast<uint4*>(table)[i] = lane_table[i];
    __syncthreads();

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const unsigned int lane4 = lane * 4;
    const unsigned int table_address = (unsigned int)__cvta_generic_to_shared(table);
    const int row_bytes = k / 2;
    const int steps = k / 128;                 // 64 bytes of each row a step
    const int blocks_per_row = k / 64;
    const bool has_x = g < m;
    const unsigned int* x_row = x + (size_t)(has_x ? g : 0) * row_bytes;

    for (int tile = blockIdx.x; tile * 16 < n; tile += gridDim.x) {{
        const int row_g = min(tile * 16 + g, n - 1);
        const int row_h = min(tile * 16 + g + 8, n - 1);
        const unsigned char* weight_g = weight + (size_t)row_g * row_bytes + 16 * t;
        const unsigned char* weight_h = weight + (size_t)row_h * row_bytes + 16 * t;
        float c[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
        for (int step = warp; step < steps; step += WARPS * UNROLL) {{
            uint4 packed_g[UNROLL], packed_h[UNROLL];
            float scale_g[UNROLL], scale_h[UNROLL];
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {{
                const int s = min(step + u * WARPS, steps - 1);
                packed_g[u] = load_streaming(weight_g + 64 * s);
                packed_h[u] = load_streaming(weight_h + 64 * s);
                const int block = 2 * s + (t >> 1);
                scale_g[u] = block_scale(absmax, absmax_code, nested_absmax, absmax_offset, row_g * blocks_per_row + block);
                scale_h[u] = block_scale(absmax, absmax_code, nested_absmax, absmax_offset, row_h * blocks_per_row + block);
            }}
            #pragma unroll
            for (int u = 0; u < UNROLL; ++u) {{
                if (step + u * WARPS >= steps) break;
                const int offset = 64 * (step + u * WARPS) + 16 * t;   // byte = x pair index
                uint4 xs[4];
                #pragma unroll
                for (int i = 0; i < 4; ++i)
                    xs[i] = has_x ? __ldg(reinterpret_cast<const uint4*>(x_row + offset) + i) : make_uint4(0, 0, 0, 0);
                const unsigned int x_words[16] = {{xs[0].x, xs[0].y, xs[0].z, xs[0].w, xs[1].x, xs[1].y, xs[1].z, xs[1].w,
                                                  xs[2].x, xs[2].y, xs[2].z, xs[2].w, xs[3].x, xs[3].y, xs[3].z, xs[3].w}};
                const unsigned int sg = bfloat16_pair(scale_g[u]);
                const unsigned int sh = bfloat16_pair(scale_h[u]);
                const unsigned int words_g[4] = {{packed_g[u].x, packed_g[u].y, packed_g[u].z, packed_g[u].w}};
                const unsigned int words_h[4] = {{packed_h[u].x, packed_h[u].y, packed_h[u].z, packed_h[u].w}};
                #pragma unroll
                for (int w = 0; w < 4; ++w) {{
                    unsigned int pg[4], ph[4];
                    word_pairs(table_address, words_g[w], lane4, sg, pg);
                    word_pairs(table_address, words_h[w], lane4, sh, ph);
                    // bytes 4w .. 4w+3 of the lane's 16: two mma's, each taking a byte pair (2j, 2j+1)
                    mma(c, pg[0], ph[0], pg[1], ph[1], x_words[4 * w], x_words[4 * w + 1]);
                    mma(c, pg[2], ph[2], pg[3], ph[3], x_words[4 * w + 2], x_words[4 * w + 3]);
                }}
            }}
        }}
        #pragma unroll
        for (int i = 0; i < 4; ++i) partial[warp][lane][i] = c[i];
        __syncthreads();
        if (warp == 0) {{
            float total[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
            #pragma unroll
            for (int w = 0; w < WARPS; ++w) {{
                #pragma unroll
                for (int i = 0; i < 4; ++i) total[i] += partial[w][lane][i];
            }}
            // c0, c1: row g, columns (x rows) 2t, 2t + 1; c2, c3: row g + 8
            #pragma unroll
            for (int i = 0; i < 4; ++i) {{
                const int x_row_index = 2 * t + (i & 1);
                const int row = tile * 16 + g + (i >= 2 ? 8 : 0);
                if (x_row_index < m && row < n) out[(size_t)x_row_index * n + row] = to_bfloat16(total[i]);
            }}
        }}
        __syncthreads();
    }}
}}
"""


def kernel_source(name: str, warps: int, nested: bool, unroll: int, byte_permute: bool = False) -> str:
    """`byte_permute`: a byte's table address by a byte permute and a multiply-add instead of a shift, a mask-or
    and an add (SASS for sm_90, a step of the loop: 233 -> 205 instructions with nested absmax, 207 -> 179 with
    float32 absmax); a candidate until the H200 measures it (docs/lab/speed.md), the same output bit for bit."""
    return _SOURCE.format(
        name=name,
        warps=warps,
        nested=int(nested),
        unroll=unroll,
        byte_permute=int(byte_permute),
        nested_blocksize=NESTED_BLOCKSIZE,
    )


def lane_table() -> list[int]:
    """The 256 byte values' code pairs (first code, the high nibble, in the low half) as bfloat16 pairs, each
    repeated for the 32 lanes: word v * 32 + lane."""
    bits = [bfloat16_bits(value) for value in NF4_CODE_BOOK]
    pairs = [bits[v >> 4] | bits[v & 15] << 16 for v in range(256)]
    return [pair for pair in pairs for _ in range(32)]


@functools.cache
def _table(device: torch.device) -> torch.Tensor:
    words = lane_table()
    data = struct.pack(f"<{len(words)}I", *words)
    return torch.frombuffer(bytearray(data), dtype=torch.int32).to(device)


@functools.cache
def _kernel(architecture: str, warps: int, nested: bool, unroll: int, byte_permute: bool) -> runtime_cuda.Kernel:
    name = f"nf4_mma_w{warps}_u{unroll}_{'nested' if nested else 'float'}{'_prmt' if byte_permute else ''}"
    return runtime_cuda.Kernel(
        runtime_cuda.compile_cubin(kernel_source(name, warps, nested, unroll, byte_permute), name, architecture), name
    )


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class NF4FewRows:
    """`x @ W.T` for 1 to MAX_ROWS rows of bfloat16 x and one bitsandbytes NF4 weight W [N, K], on CUDA."""

    def __init__(
        self,
        packed_weight: torch.Tensor,
        quant_state,
        warps: int = 8,
        unroll: int = 1,
        ctas_per_sm: int = 4,
        byte_permute: bool = False,
    ):
        """`byte_permute`: kernel_source's; off in the service until the H200 says it pays."""
        self.parts = NF4Parts.of(packed_weight, quant_state, K_MULTIPLE)
        self.out_features, self.in_features = self.parts.out_features, self.parts.in_features
        self.warps, self.unroll, self.ctas_per_sm, self.byte_permute = warps, unroll, ctas_per_sm, byte_permute

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if x.dtype != torch.bfloat16 or x.shape[-1] != self.in_features or not 1 <= rows <= MAX_ROWS:
            raise ValueError(
                f"1 to {MAX_ROWS} bfloat16 rows of {self.in_features} values, got {x.dtype} {tuple(x.shape)}"
            )
        flat = x.reshape(rows, self.in_features).contiguous()
        if flat.data_ptr() % 16:  # read as 16-byte vectors
            flat = flat.clone()
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.bfloat16, device=x.device)
        kernel = _kernel(
            runtime_cuda.architecture(x.device), self.warps, self.parts.nested, self.unroll, self.byte_permute
        )
        tiles = -(-self.out_features // 16)
        ctas = min(tiles, _multiprocessors(x.device.index or 0) * self.ctas_per_sm)
        kernel.launch(
            (ctas, 1, 1),
            (self.warps * 32, 1, 1),
            (flat, *self.parts.kernel_arguments(), _table(x.device), out, rows, self.out_features, self.in_features),
        )
        return out
