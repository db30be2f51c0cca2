// Fused kernels of the CUDA decoding step (one token per row, LlamaModelImpl's static path). Each does in
// one launch what the plain path does in several, rounding at the same points, so the results equal the
// plain path's (and the reference's) up to the order of fp32 sums. Internal to liblego_llm: plain pointers,
// no libtorch, so that nvcc compiles no torch headers. `dtype`: 0 = float32, 1 = bfloat16.
#pragma once

#include <cstdint>

namespace lego::llm::cuda {

// out = weight * round(v * rsqrt(mean(v^2) + eps)), v = round(a + b) (b may be null: v = a), each of `rows`
// rows of `width`; v is also written to `sum` when it is not null.
void add_rms_norm(int dtype, const void* a, const void* b, void* sum, const void* weight, void* out, int64_t rows,
                  int64_t width, float eps, void* stream);

// For rows of `qkv` [B, heads + 2 kv, D]: rotates the q heads in place, and writes the rotated k heads and
// the v heads into the caches [B, kv, capacity, D] at the slot held in `slot` (device int64).
// `cos`/`sin` [B, D], sin's first half negated (RotaryEmbeddingImpl's tables).
void rope_into_cache(int dtype, void* qkv, const void* cos, const void* sin, void* k_cache, void* v_cache,
                     const int64_t* slot, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                     int64_t capacity, void* stream);

// out [rows, m] = round(round(silu(gate)) * up) for gate_up [rows, 2 m] (gate first).
void silu_mul(int dtype, const void* gate_up, void* out, int64_t rows, int64_t m, void* stream);

// y [n] = round(W [n, k] x [k] + bias) for one row x, bf16 only, fp32 accumulation: a matrix-vector product
// that streams W with 16-byte loads, one warp per output. Returns false (doing nothing) where it does not
// apply (k not a multiple of 8, or pointers not 16-byte aligned); the caller then uses cuBLAS.
bool gemv_bf16(const void* weight, const void* x, const void* bias, void* y, int64_t n, int64_t k, void* stream);

}  // namespace lego::llm::cuda
