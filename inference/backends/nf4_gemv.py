"""One row times a bitsandbytes NF4 weight (a decoding step for one request), in CUDA C++ compiled at run time.

At one row the product only reads: the 4-bit weight once, and a few kilobytes of x. bitsandbytes' one-row
kernel and the Triton kernels (nf4_kernel.py) all stop at 1.0-1.2 TB/s on an H200, about a quarter of its
memory's speed, with the arithmetic per weight byte (unpacking, looking codes up, converting, multiplying)
as the limit. This kernel spends about four instructions a code: each lane owns 32 consecutive columns
(one 16-byte piece of a weight row), holds their x values in registers as float32 for every row of its
block, and looks each 4-bit code up in a 16-entry float32 table in shared memory (16 words, 16 banks: no
lane ever waits for another), one fused multiply-add per code. A block of WARPS warps takes ROWS weight
rows, every lane loading ROWS 16-byte pieces before it computes, so enough bytes are in flight to keep
the memory busy; a row's sum is scaled by each 64-code block's absmax (double-quantized: decoded on the
fly) and reduced across the lanes and warps, then rounded to bfloat16 once.

On the H200 it is 1.3-2.3x faster than bitsandbytes on every 11B and 90B shape (1.5-1.9 TB/s on the large
ones; docs/lab/speed.md); the same loads without the arithmetic run at 2.5-3.4 TB/s, so the instructions
a code are still the limit. bitsandbytes' layout as it is (row-major, two codes a byte, the first in the
high nibble): the checkpoint and every other path are unchanged. CUDA only; x in bfloat16.
"""

from __future__ import annotations

import functools

import torch

from inference.backends import runtime_cuda
from inference.backends.nf4_decode_ptx import NF4_CODE_BOOK
from inference.backends.nf4_parts import NF4Parts
from inference.model_layout import NESTED_BLOCKSIZE

# Each lane takes 32 codes (16 bytes) of a row; rows must split into whole pieces.
CODES_PER_LANE = 32

_SOURCE = r"""
#define ROWS {rows}
#define WARPS {warps}
#define NESTED {nested}
#define DECODE {decode}

__constant__ float NF4_CODE_BOOK[16] = {{ {code_book} }};

__device__ __forceinline__ uint4 load_streaming(const uint4* address) {{
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {{%0, %1, %2, %3}}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(address));
    return v;
}}

template <int BYTE>
__device__ __forceinline__ unsigned int byte_of(unsigned int word) {{
    unsigned int value;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(value) : "r"(word), "n"(0x4440 + BYTE));
    return value;
}}

__device__ __forceinline__ float table_at(const float* book, unsigned int offset) {{
    return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(book) + offset);
}}

__device__ __forceinline__ float dot_word_by_bytes(const float* book, unsigned int word, const float* x, float sum) {{
    // Every code's table offset (code * 4) for four codes in two instructions, then one byte permute a code.
    const unsigned int first = (word >> 2) & 0x3c3c3c3cu;
    const unsigned int second = (word << 2) & 0x3c3c3c3cu;
    sum = fmaf(table_at(book, byte_of<0>(first)), x[0], sum);
    sum = fmaf(table_at(book, byte_of<0>(second)), x[1], sum);
    sum = fmaf(table_at(book, byte_of<1>(first)), x[2], sum);
    sum = fmaf(table_at(book, byte_of<1>(second)), x[3], sum);
    sum = fmaf(table_at(book, byte_of<2>(first)), x[4], sum);
    sum = fmaf(table_at(book, byte_of<2>(second)), x[5], sum);
    sum = fmaf(table_at(book, byte_of<3>(first)), x[6], sum);
    sum = fmaf(table_at(book, byte_of<3>(second)), x[7], sum);
    return sum;
}}

__device__ __forceinline__ unsigned short to_bfloat16(float value) {{
    unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}}

extern "C" __global__ void __launch_bounds__(WARPS * 32) {name}(
    const uint4* __restrict__ x,
    const uint4* __restrict__ weight,
    const void* __restrict__ absmax,
    const float* __restrict__ absmax_code,
    const float* __restrict__ nested_absmax,
    float absmax_offset,
    unsigned short* __restrict__ out,
    int n,
    int k)
{{
    __shared__ float book[16];
    __shared__ float partial[WARPS][ROWS];
    if (threadIdx.x < 16) book[threadIdx.x] = NF4_CODE_BOOK[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int pieces = k / 32;
    const int blocks_per_row = k / 64;
    const int first_row = blockIdx.x * ROWS;
    float sums[ROWS];
    #pragma unroll
    for (int r = 0; r < ROWS; ++r) sums[r] = 0.0f;

    for (int piece = warp * 32 + lane; piece < pieces; piece += WARPS * 32) {{
        uint4 packed[ROWS];
        #pragma unroll
        for (int r = 0; r < ROWS; ++r) {{
            const int row = min(first_row + r, n - 1);
            packed[r] = load_streaming(weight + (size_t)row * pieces + piece);
        }}
        float scales[ROWS];
        #pragma unroll
        for (int r = 0; r < ROWS; ++r) {{
            const int block = min(first_row + r, n - 1) * blocks_per_row + piece / 2;
#if NESTED
            const unsigned char q = reinterpret_cast<const unsigned char*>(absmax)[block];
            scales[r] = __ldg(absmax_code + q) * __ldg(nested_absmax + block / {nested_blocksize}) + absmax_offset;
#else
            scales[r] = __ldg(reinterpret_cast<const float*>(absmax) + block);
#endif
        }}
        float xs[32];
        #pragma unroll
        for (int i = 0; i < 4; ++i) {{
            const uint4 v = __ldg(x + piece * 4 + i);
            const unsigned int words[4] = {{v.x, v.y, v.z, v.w}};
            #pragma unroll
            for (int j = 0; j < 4; ++j) {{
                xs[8 * i + 2 * j] = __uint_as_float(words[j] << 16);
                xs[8 * i + 2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
            }}
        }}
        #pragma unroll
        for (int r = 0; r < ROWS; ++r) {{
            float sum = 0.0f;
#if DECODE
            sum = dot_word_by_bytes(book, packed[r].x, xs, sum);
            sum = dot_word_by_bytes(book, packed[r].y, xs + 8, sum);
            sum = dot_word_by_bytes(book, packed[r].z, xs + 16, sum);
            sum = dot_word_by_bytes(book, packed[r].w, xs + 24, sum);
#else
            sum = __uint_as_float((packed[r].x ^ packed[r].y ^ packed[r].z ^ packed[r].w) & 0x3f7fffffu) * xs[0];
#endif
            sums[r] = fmaf(sum, scales[r], sums[r]);
        }}
    }}
    #pragma unroll
    for (int r = 0; r < ROWS; ++r) {{
        float v = sums[r];
        #pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
        if (lane == 0) partial[warp][r] = v;
    }}
    __syncthreads();
    if (threadIdx.x < ROWS && first_row + threadIdx.x < n) {{
        float total = 0.0f;
        #pragma unroll
        for (int w = 0; w < WARPS; ++w) total += partial[w][threadIdx.x];
        out[first_row + threadIdx.x] = to_bfloat16(total);
    }}
}}
"""


def kernel_source(name: str, rows: int, warps: int, nested: bool, decode: bool = True) -> str:
    """The CUDA source of one configuration. Without `decode`, the same loads without the arithmetic (wrong
    results): what the memory alone allows, for scripts/nf4_one_row_bench.py."""
    return _SOURCE.format(
        name=name,
        rows=rows,
        warps=warps,
        nested=int(nested),
        decode=int(decode),
        nested_blocksize=NESTED_BLOCKSIZE,
        code_book=", ".join(f"{value!r}f" for value in NF4_CODE_BOOK),
    )


@functools.cache
def _kernel(architecture: str, rows: int, warps: int, nested: bool, decode: bool) -> runtime_cuda.Kernel:
    name = f"nf4_gemv_r{rows}_w{warps}_{'nested' if nested else 'float'}{'' if decode else '_loads'}"
    cubin = runtime_cuda.compile_cubin(kernel_source(name, rows, warps, nested, decode), name, architecture)
    return runtime_cuda.Kernel(cubin, name)


# Four warps a block measured fastest on every 11B and 90B shape on the H200 (8 warps: up to 1.5x slower); the
# rows a block are timed per weight shape among these (the best differ by shape, by up to 15%).
WARPS = 4
ROW_CHOICES = (2, 4, 8)
# (out_features, in_features, nested) -> rows a block, timed at a weight shape's first product
_TUNED_ROWS: dict[tuple[int, int, bool], int] = {}


class NF4OneRow:
    """`x @ W.T` for one row of bfloat16 x and one bitsandbytes NF4 weight W [N, K], on CUDA.

    Its block shape is timed at the first product of each weight shape outside a CUDA graph capture (a
    capture before that uses 4 rows a block).
    """

    def __init__(self, packed_weight: torch.Tensor, quant_state, rows: int | None = None, warps: int = WARPS):
        self.parts = NF4Parts.of(packed_weight, quant_state, 2 * CODES_PER_LANE)
        self.out_features, self.in_features = self.parts.out_features, self.parts.in_features
        self.rows = rows
        self.warps = warps

    def matmul(self, x: torch.Tensor, decode: bool = True) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.numel() != self.in_features:
            raise ValueError(f"one bfloat16 row of {self.in_features} values, got {x.dtype} {tuple(x.shape)}")
        row = x.contiguous()
        if row.data_ptr() % 16:  # the kernel reads x as 16-byte vectors
            row = row.clone()
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.bfloat16, device=x.device)
        self._launch(row, out, self._rows(row, out), decode)
        return out

    def _rows(self, row: torch.Tensor, out: torch.Tensor) -> int:
        if self.rows is not None:
            return self.rows
        key = (self.out_features, self.in_features, self.parts.nested)
        if key not in _TUNED_ROWS:
            if torch.cuda.is_current_stream_capturing():
                return 4
            _TUNED_ROWS[key] = min(ROW_CHOICES, key=lambda rows: _seconds(lambda: self._launch(row, out, rows)))
        return _TUNED_ROWS[key]

    def _launch(self, row: torch.Tensor, out: torch.Tensor, rows: int, decode: bool = True) -> None:
        kernel = _kernel(runtime_cuda.architecture(row.device), rows, self.warps, self.parts.nested, decode)
        kernel.launch(
            (-(-self.out_features // rows), 1, 1),
            (self.warps * 32, 1, 1),
            (row, *self.parts.kernel_arguments(), out, self.out_features, self.in_features),
        )


def _seconds(launch, repeats: int = 20) -> float:
    for _ in range(3):  # compile, load, warm up
        launch()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        launch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats
