#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "decode_kernels.h"

namespace lego::llm::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float up(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float up<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T>
__device__ __forceinline__ T down(float x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 down<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    partial[0] = total;
  }
  __syncthreads();
  total = partial[0];
  __syncthreads();
  return total;
}

template <typename T>
__global__ void add_rms_norm_kernel(const T* a, const T* b, T* sum, const T* weight, T* out, int64_t width,
                                    float eps) {
  const int64_t row = blockIdx.x;
  const T* ra = a + row * width;
  const T* rb = b != nullptr ? b + row * width : nullptr;
  T* rs = sum != nullptr ? sum + row * width : nullptr;
  T* ro = out + row * width;
  float squares = 0;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const T v = rb != nullptr ? down<T>(up(ra[i]) + up(rb[i])) : ra[i];
    if (rs != nullptr) rs[i] = v;
    squares += up(v) * up(v);
  }
  const float inv = rsqrtf(block_sum(squares) / static_cast<float>(width) + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const T v = rb != nullptr ? down<T>(up(ra[i]) + up(rb[i])) : ra[i];
    ro[i] = down<T>(up(weight[i]) * up(down<T>(up(v) * inv)));
  }
}

// One block per (row, head); threads over the pairs (i, i + D/2).
template <typename T>
__global__ void rope_into_cache_kernel(T* qkv, const T* cos, const T* sin, T* k_cache, T* v_cache,
                                       const int64_t* slot, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                       int64_t capacity) {
  const int64_t row = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t half = head_dim / 2;
  const int64_t total_heads = heads + 2 * kv_heads;
  T* x = qkv + (row * total_heads + head) * head_dim;
  const T* c = cos + row * head_dim;
  const T* s = sin + row * head_dim;
  const int64_t at = *slot;
  if (head >= heads + kv_heads) {  // v: copied into the cache as it is
    T* dst = v_cache + ((row * kv_heads + (head - heads - kv_heads)) * capacity + at) * head_dim;
    for (int64_t i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = x[i];
    return;
  }
  T* dst = head < heads ? x : k_cache + ((row * kv_heads + (head - heads)) * capacity + at) * head_dim;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const T lo = x[i];
    const T hi = x[i + half];
    // x * cos + swap_halves(x) * sin, each product and the sum rounded as the plain path rounds them.
    dst[i] = down<T>(up(down<T>(up(lo) * up(c[i]))) + up(down<T>(up(hi) * up(s[i]))));
    dst[i + half] = down<T>(up(down<T>(up(hi) * up(c[i + half]))) + up(down<T>(up(lo) * up(s[i + half]))));
  }
}

template <typename T>
__global__ void silu_mul_kernel(const T* gate_up, T* out, int64_t m) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  const float g = up(gate_up[row * 2 * m + i]);
  const T activated = down<T>(g / (1.0f + expf(-g)));
  out[row * m + i] = down<T>(up(activated) * up(gate_up[row * 2 * m + m + i]));
}

// One warp per output row; each lane reads 8 bf16 (16 bytes) of the row per iteration.
constexpr int kGemvWarps = 8;

__global__ void gemv_bf16_kernel(const __nv_bfloat16* __restrict__ weight, const __nv_bfloat16* __restrict__ x,
                                 const __nv_bfloat16* __restrict__ bias, __nv_bfloat16* __restrict__ y, int64_t n,
                                 int64_t k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const auto* w = reinterpret_cast<const uint4*>(weight + row * k);
  const auto* v = reinterpret_cast<const uint4*>(x);
  const int64_t chunks = k / 8;
  float acc = 0;
  for (int64_t c = lane; c < chunks; c += 32) {
    uint4 wq = __ldg(w + c);  // streamed once
    uint4 xq = v[c];          // reused by every warp: stays in cache
    const auto* wh = reinterpret_cast<const __nv_bfloat162*>(&wq);
    const auto* xh = reinterpret_cast<const __nv_bfloat162*>(&xq);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 a = __bfloat1622float2(wh[i]);
      const float2 b = __bfloat1622float2(xh[i]);
      acc += a.x * b.x + a.y * b.y;
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) {
    if (bias != nullptr) acc += __bfloat162float(bias[row]);
    y[row] = __float2bfloat16_rn(acc);
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

}  // namespace

void add_rms_norm(int dtype, const void* a, const void* b, void* sum, const void* weight, void* out, int64_t rows,
                  int64_t width, float eps, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == 1) {
    add_rms_norm_kernel<__nv_bfloat16><<<rows, kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b), static_cast<__nv_bfloat16*>(sum),
        static_cast<const __nv_bfloat16*>(weight), static_cast<__nv_bfloat16*>(out), width, eps);
  } else {
    add_rms_norm_kernel<float><<<rows, kThreads, 0, s>>>(static_cast<const float*>(a), static_cast<const float*>(b),
                                                         static_cast<float*>(sum), static_cast<const float*>(weight),
                                                         static_cast<float*>(out), width, eps);
  }
  check(cudaGetLastError(), "add_rms_norm");
}

void rope_into_cache(int dtype, void* qkv, const void* cos, const void* sin, void* k_cache, void* v_cache,
                     const int64_t* slot, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
                     int64_t capacity, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(heads + 2 * kv_heads));
  const int threads = static_cast<int>(head_dim / 2 < 32 ? 32 : (head_dim / 2 > 256 ? 256 : head_dim / 2));
  if (dtype == 1) {
    rope_into_cache_kernel<__nv_bfloat16><<<grid, threads, 0, s>>>(
        static_cast<__nv_bfloat16*>(qkv), static_cast<const __nv_bfloat16*>(cos), static_cast<const __nv_bfloat16*>(sin),
        static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache), slot, heads, kv_heads, head_dim,
        capacity);
  } else {
    rope_into_cache_kernel<float><<<grid, threads, 0, s>>>(
        static_cast<float*>(qkv), static_cast<const float*>(cos), static_cast<const float*>(sin),
        static_cast<float*>(k_cache), static_cast<float*>(v_cache), slot, heads, kv_heads, head_dim, capacity);
  }
  check(cudaGetLastError(), "rope_into_cache");
}

void silu_mul(int dtype, const void* gate_up, void* out, int64_t rows, int64_t m, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>((m + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
  if (dtype == 1) {
    silu_mul_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(gate_up),
                                                             static_cast<__nv_bfloat16*>(out), m);
  } else {
    silu_mul_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<const float*>(gate_up), static_cast<float*>(out), m);
  }
  check(cudaGetLastError(), "silu_mul");
}

bool gemv_bf16(const void* weight, const void* x, const void* bias, void* y, int64_t n, int64_t k, void* stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (k % 8 != 0 || !aligned(weight) || !aligned(x) || n <= 0) return false;
  const auto blocks = static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps);
  gemv_bf16_kernel<<<blocks, kGemvWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16*>(weight), static_cast<const __nv_bfloat16*>(x),
      static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(y), n, k);
  check(cudaGetLastError(), "gemv_bf16");
  return true;
}

}  // namespace lego::llm::cuda
