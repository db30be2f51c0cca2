// The CPU matrix products of decoding (lego/llm/quant.h): bf16 and block-quantised weights times a few
// rows of float32 activations. Each kernel has a portable form and an AVX2/FMA/F16C form compiled with a
// target attribute, so the library runs on any x86-64 and takes AVX2 where the CPU has it.
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "lego/llm/quant.h"
#include "lego/sdk/error.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LEGO_X86 1
// Unrolls a loop over a tile's accumulators before GCC decides whether they live in registers (without it,
// a 6 × 2 tile kept a copy of its 12 accumulators on the stack, stored on every column).
#define LEGO_UNROLL _Pragma("GCC unroll 16")
#define LEGO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LEGO_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))
#endif

namespace lego::llm::kernels {
namespace {

constexpr int64_t kQ = 32;  // columns per activation scale and per integer dot
// Each tile of WR weight rows prefetches the same columns of the next WR rows: rows lie one after another,
// so the next tile's rows are what comes after this tile's, and they are fetched a whole tile ahead. (A
// fixed distance within the row fetched nothing new near a row's end, where the hardware prefetchers stop at
// the page boundary: the next tile's rows started cold, and a model with 4 KiB rows lost a third.)

float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float half_to_float(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Calls rows(begin, end) over [0, n) in chunks that the intra-op threads take in turn as each finishes
// its last: a static split into equal halves left one thread waiting for the other at the end of every
// product (the cores of a shared machine do not run at one speed), 12 % of a decoding step. Chunks are
// whole 4-row tiles, about 8 per thread, and at least 16 rows.
template <typename Rows>
void parallel_rows(int64_t n, const Rows& rows) {
  const int threads = std::max(1, at::get_num_threads());
  const int64_t chunk = std::max<int64_t>(16, (n / (8 * threads) + 3) / 4 * 4);
  const int64_t chunks = (n + chunk - 1) / chunk;
  if (threads == 1 || chunks == 1 || at::in_parallel_region()) {
    rows(int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(threads, chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      rows(c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

// Activations rounded to int8 per 32 columns: q = round(x / d), d = max|x| / 127 (Q8_0's rule).
struct QuantizedActivations {
  std::vector<int8_t> q;    // [m, k]
  std::vector<float> scale; // [m, k / 32]
};

QuantizedActivations quantize_activations(const float* x, int64_t m, int64_t k) {
  QuantizedActivations a;
  a.q.resize(static_cast<size_t>(m * k));
  a.scale.resize(static_cast<size_t>(m * k / kQ));
  for (int64_t b = 0; b < m * k / kQ; ++b) {
    const float* src = x + b * kQ;
    float amax = 0.f;
    for (int64_t j = 0; j < kQ; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127.f;
    const float inv = d > 0.f ? 1.f / d : 0.f;
    a.scale[static_cast<size_t>(b)] = d;
    for (int64_t j = 0; j < kQ; ++j) {
      a.q[static_cast<size_t>(b * kQ + j)] = static_cast<int8_t>(std::nearbyint(src[j] * inv));
    }
  }
  return a;
}

// One 32-column sub-block of a quantised row as 32 signed values.
void unpack_portable(const uint8_t* values, WeightFormat format, int8_t* out) {
  if (format == WeightFormat::Int8) {
    std::memcpy(out, values, kQ);
    return;
  }
  for (int j = 0; j < 16; ++j) {
    out[j] = static_cast<int8_t>((values[j] & 0x0F) - 8);
    out[j + 16] = static_cast<int8_t>((values[j] >> 4) - 8);
  }
}

void bf16_portable(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y) {
  parallel_rows(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint16_t* row = w + i * k;
      for (int64_t r = 0; r < m; ++r) {
        const float* xr = x + r * k;
        float sum = 0.f;
        for (int64_t j = 0; j < k; ++j) sum += bf16_to_float(row[j]) * xr[j];
        y[r * n + i] = sum;
      }
    }
  });
}

void quant_portable(const uint8_t* w, const QuantFormat& f, int64_t n, int64_t k, const float* x, int64_t m, float* y) {
  const auto a = quantize_activations(x, m, k);
  const int64_t row_bytes = f.row_bytes(k);
  const int64_t sub_bytes = f.format == WeightFormat::Int4 ? 16 : kQ;
  parallel_rows(n, [&](int64_t begin, int64_t end) {
    int8_t vals[kQ];
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t r = 0; r < m; ++r) {
        const uint8_t* p = w + i * row_bytes;
        const int8_t* xq = a.q.data() + r * k;
        const float* xs = a.scale.data() + r * (k / kQ);
        float sum = 0.f;
        for (int64_t g = 0; g < k / f.group; ++g) {
          const float ws = half_to_float(p);
          p += 2;
          for (int64_t s = 0; s < f.group / kQ; ++s, p += sub_bytes) {
            unpack_portable(p, f.format, vals);
            const int64_t col = g * f.group + s * kQ;
            int32_t dot = 0;
            for (int j = 0; j < kQ; ++j) dot += static_cast<int32_t>(vals[j]) * xq[col + j];
            sum += static_cast<float>(dot) * (ws * xs[col / kQ]);
          }
        }
        y[r * n + i] = sum;
      }
    }
  });
}

#ifdef LEGO_X86
// Calls rows(integral_constant<int, WR>{}, i) over the weight rows [begin, end): 4 at a time in a decoding
// step (one row of activations), else 2, then the one left.
template <typename Rows>
void for_each_tile(int64_t begin, int64_t end, int64_t m, const Rows& rows) {
  int64_t i = begin;
  for (; i + 4 <= end && m == 1; i += 4) rows(std::integral_constant<int, 4>{}, i);
  for (; i + 2 <= end; i += 2) rows(std::integral_constant<int, 2>{}, i);
  if (i < end) rows(std::integral_constant<int, 1>{}, i);
}

// Calls tile(integral_constant<int, R>{}, r) over the m rows of activations, 2 at a time, then the one left.
template <typename Tile>
void for_each_row_pair(int64_t m, const Tile& tile) {
  int64_t r = 0;
  for (; r + 2 <= m; r += 2) tile(std::integral_constant<int, 2>{}, r);
  if (r < m) tile(std::integral_constant<int, 1>{}, r);
}

LEGO_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// WR rows of w against R rows of the permuted activations: per 16 columns, the even bf16 values become
// float32 by a shift and the odd ones by a mask, matched by activations stored evens-then-odds.
template <int WR, int R>
LEGO_AVX2 void bf16_tile(const uint16_t* w, int64_t k, const float* xp, float* out, int64_t out_stride) {
  const __m256i odd_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 even[WR][R], odd[WR][R];
  LEGO_UNROLL for (int a = 0; a < WR; ++a) {
    LEGO_UNROLL for (int r = 0; r < R; ++r) even[a][r] = odd[a][r] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < k; j += 16) {
    LEGO_UNROLL for (int a = 0; a < WR; ++a) {
      if ((j & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + (a + WR) * k + j), _MM_HINT_T0);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + a * k + j));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(raw, odd_mask));
      LEGO_UNROLL for (int r = 0; r < R; ++r) {
        even[a][r] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xp + r * k + j), even[a][r]);
        odd[a][r] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xp + r * k + j + 8), odd[a][r]);
      }
    }
  }
  LEGO_UNROLL for (int a = 0; a < WR; ++a) {
    LEGO_UNROLL for (int r = 0; r < R; ++r) out[r * out_stride + a] = hsum(_mm256_add_ps(even[a][r], odd[a][r]));
  }
}

// A prompt's product (bench/cpu_kernels --rows 32). Per 16 weight rows and kGemmCols columns, the bf16
// weights become a float32 panel [columns][16 rows] in L1, and a kernel broadcasts 6 rows of activations
// against it: 12 accumulators of finished outputs, each weight read once from memory for all the rows of x.
// (The dot-product tiles above read the weights once per 2 rows of x, their activations from L2 on every
// column, and end in horizontal sums.) The activations are rearranged once per call into groups of 6 rows
// interleaved by column, so that a kernel's broadcasts read one stream instead of 6 rows k apart, which
// fall in the same L1 sets when k is a multiple of 1024.
constexpr int64_t kGemmMinRows = 16;  // fewer rows of x take bf16_tile
constexpr int64_t kGemmCols = 256;    // columns per panel: 16 KiB of float32
constexpr int kGemmRows = 6;          // rows of x per kernel call

// 8 rows of w (stride k), 8 columns from `col`, as float32, transposed: out[c * stride + r] = w[r][col + c].
LEGO_AVX2 void pack_bf16_8x8(const uint16_t* w, int64_t k, int64_t col, float* out, int64_t stride) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i * k + col));
    r[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  }
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(out + c * stride, _mm256_permute2f128_ps(u[c], u[c + 4], 0x20));
    _mm256_storeu_ps(out + (c + 4) * stride, _mm256_permute2f128_ps(u[c], u[c + 4], 0x31));
  }
}

// R rows of x, interleaved (xg[j * kGemmRows + r]), against a panel of 8·V weight rows over `cols`
// columns: y [R, 8·V] (stride n) = (first ? 0 : y) + x · panel.
template <int R, int V>
LEGO_AVX2 void bf16_gemm_tile(const float* panel, int64_t cols, const float* xg, float* y, int64_t n, bool first) {
  __m256 c[R][V];
  LEGO_UNROLL for (int r = 0; r < R; ++r) {
    LEGO_UNROLL for (int v = 0; v < V; ++v) c[r][v] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < cols; ++j) {
    __m256 b[V];
    LEGO_UNROLL for (int v = 0; v < V; ++v) b[v] = _mm256_load_ps(panel + j * 8 * V + 8 * v);
    LEGO_UNROLL for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(xg + j * kGemmRows + r);
      LEGO_UNROLL for (int v = 0; v < V; ++v) c[r][v] = _mm256_fmadd_ps(a, b[v], c[r][v]);
    }
  }
  LEGO_UNROLL for (int r = 0; r < R; ++r) {
    LEGO_UNROLL for (int v = 0; v < V; ++v) {
      float* out = y + r * n + 8 * v;
      _mm256_storeu_ps(out, first ? c[r][v] : _mm256_add_ps(c[r][v], _mm256_loadu_ps(out)));
    }
  }
}

// One panel against all m rows of x (xp: the interleaved groups, k columns each; col: the panel's first).
template <int V>
LEGO_AVX2 void bf16_gemm_rows(const float* panel, int64_t cols, const float* xp, int64_t k, int64_t col, int64_t m,
                              float* y, int64_t n) {
  const bool first = col == 0;
  for (int64_t r = 0; r < m; r += kGemmRows) {
    const float* xg = xp + (r * k + col * kGemmRows);  // group r / 6 starts at r * k
    float* yr = y + r * n;
    switch (std::min<int64_t>(kGemmRows, m - r)) {
      case 6: bf16_gemm_tile<6, V>(panel, cols, xg, yr, n, first); break;
      case 5: bf16_gemm_tile<5, V>(panel, cols, xg, yr, n, first); break;
      case 4: bf16_gemm_tile<4, V>(panel, cols, xg, yr, n, first); break;
      case 3: bf16_gemm_tile<3, V>(panel, cols, xg, yr, n, first); break;
      case 2: bf16_gemm_tile<2, V>(panel, cols, xg, yr, n, first); break;
      default: bf16_gemm_tile<1, V>(panel, cols, xg, yr, n, first); break;
    }
  }
}

// n % 8 == 0, k % 16 == 0. The threads share the weight rows 8 at a time and walk theirs 16 at a time,
// each 16 rows kGemmCols columns at a time, so that every row of w is read front to back.
LEGO_AVX2 void bf16_gemm_avx2(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y) {
  const int64_t groups = (m + kGemmRows - 1) / kGemmRows;
  std::vector<float> xp(static_cast<size_t>(groups * kGemmRows * k), 0.f);
  for (int64_t r = 0; r < m; ++r) {
    float* dst = xp.data() + (r / kGemmRows) * kGemmRows * k + r % kGemmRows;
    for (int64_t j = 0; j < k; ++j) dst[j * kGemmRows] = x[r * k + j];
  }
  parallel_rows(n / 8, [&](int64_t begin, int64_t end) {
    alignas(32) float panel[kGemmCols * 16];
    for (int64_t u = begin; u < end; u += 2) {
      const int V = u + 2 <= end ? 2 : 1;
      const int64_t i = u * 8;
      for (int64_t col = 0; col < k; col += kGemmCols) {
        const int64_t cols = std::min(kGemmCols, k - col);
        for (int v = 0; v < V; ++v) {
          for (int64_t c = 0; c < cols; c += 8) {
            pack_bf16_8x8(w + (i + 8 * v) * k, k, col + c, panel + c * 8 * V + 8 * v, 8 * V);
          }
        }
        if (V == 2) {
          bf16_gemm_rows<2>(panel, cols, xp.data(), k, col, m, y + i, n);
        } else {
          bf16_gemm_rows<1>(panel, cols, xp.data(), k, col, m, y + i, n);
        }
      }
    }
  });
}

LEGO_AVX2 void bf16_avx2(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y) {
  if (m >= kGemmMinRows && n % 8 == 0) return bf16_gemm_avx2(w, n, k, x, m, y);
  // Activations rearranged once per call: in each 16 columns, the 8 even ones, then the 8 odd ones.
  std::vector<float> xp(static_cast<size_t>(m * k));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < k; j += 16) {
      for (int t = 0; t < 8; ++t) {
        xp[static_cast<size_t>(r * k + j + t)] = x[r * k + j + 2 * t];
        xp[static_cast<size_t>(r * k + j + 8 + t)] = x[r * k + j + 2 * t + 1];
      }
    }
  }
  parallel_rows(n, [&](int64_t begin, int64_t end) {
    for_each_tile(begin, end, m, [&](auto wr, int64_t i) {
      for_each_row_pair(m, [&](auto rr, int64_t r) {
        bf16_tile<decltype(wr)::value, decltype(rr)::value>(w + i * k, k, xp.data() + r * k, y + r * n + i, n);
      });
    });
  });
}

// The activation offsets of int4 products: per block of 32 activations, the 8 int32 lanes of
// madd(maddubs(8, x), 1), i.e. 8 × the sums of 4 activations, which the unsigned nibbles' dot must lose.
LEGO_AVX2 std::vector<int32_t> int4_offsets(const QuantizedActivations& a) {
  const int64_t blocks = static_cast<int64_t>(a.scale.size());
  std::vector<int32_t> out(static_cast<size_t>(blocks * 8));
  const __m256i eight = _mm256_set1_epi8(8);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + b * kQ));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.data() + b * 8),
                        _mm256_madd_epi16(_mm256_maddubs_epi16(eight, xv), ones));
  }
  return out;
}

// The activations of a quantised product (int8 per 32 columns, with int4's offsets) and the loop over the
// tiles: tile(WR, R, weight row i, activation row r) for the threads' shares of the n weight rows.
template <WeightFormat F, typename Tile>
void quant_product(int64_t n, int64_t k, const float* x, int64_t m, bool negate_offsets, const Tile& tile) {
  const auto a = quantize_activations(x, m, k);
  std::vector<int32_t> off;
  if constexpr (F == WeightFormat::Int4) {
    off = int4_offsets(a);
    if (negate_offsets) {
      for (auto& v : off) v = -v;
    }
  }
  const int64_t blocks = k / kQ;
  parallel_rows(n, [&](int64_t begin, int64_t end) {
    for_each_tile(begin, end, m, [&](auto wr, int64_t i) {
      for_each_row_pair(m, [&](auto rr, int64_t r) {
        const int32_t* row_off = off.empty() ? nullptr : off.data() + r * blocks * 8;
        tile(wr, rr, i, a.q.data() + r * k, a.scale.data() + r * blocks, row_off, r);
      });
    });
  });
}

// WR rows of int8 or int4 weights against R rows of int8 activations, exact integer dots per 32-column
// sub-block, each scaled by its two scales. int8: |w| times x with w's sign through maddubs (unsigned ×
// signed; pairs sum to at most 2 · 127 · 128, inside int16). int4: the stored nibbles (0..15, which maddubs
// takes as they are) times x, minus int4_offsets; one 16-byte load into both halves of a register and a
// shift of the upper half by 4 unpack a sub-block. Two or four rows of w share each load of activations.
template <WeightFormat F, int WR, int R>
LEGO_AVX2 void quant_tile(const uint8_t* w, int64_t row_bytes, int64_t group, int64_t k, const int8_t* xq,
                          const float* xs, const int32_t* offset, float* out, int64_t out_stride) {
  constexpr int64_t sub_bytes = F == WeightFormat::Int4 ? 16 : kQ;
  const int64_t block_bytes = 2 + group / kQ * sub_bytes;
  const int64_t blocks_per_row = k / kQ;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i upper_by_4 = _mm256_set_epi64x(4, 4, 0, 0);
  __m256 acc[WR][R];
  LEGO_UNROLL for (int a = 0; a < WR; ++a) {
    LEGO_UNROLL for (int r = 0; r < R; ++r) acc[a][r] = _mm256_setzero_ps();
  }
  for (int64_t g = 0, col = 0; col < k; ++g) {
    float ws[WR];
    const uint8_t* p[WR];
    LEGO_UNROLL for (int a = 0; a < WR; ++a) {
      p[a] = w + a * row_bytes + g * block_bytes;
      ws[a] = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(p[a]));
      p[a] += 2;
    }
    for (int64_t s = 0; s < group; s += kQ, col += kQ) {
      __m256i wv[WR], aw[WR];
      LEGO_UNROLL for (int a = 0; a < WR; ++a) {
        _mm_prefetch(reinterpret_cast<const char*>(p[a]) + WR * row_bytes, _MM_HINT_T0);  // one per sub-block
        if constexpr (F == WeightFormat::Int4) {
          const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[a])));
          wv[a] = _mm256_and_si256(_mm256_srlv_epi64(both, upper_by_4), low);
        } else {
          wv[a] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[a]));
          aw[a] = _mm256_sign_epi8(wv[a], wv[a]);
        }
        p[a] += sub_bytes;
      }
      LEGO_UNROLL for (int r = 0; r < R; ++r) {
        const int64_t b = r * blocks_per_row + col / kQ;
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + r * k + col));
        const float x_scale = xs[b];
        LEGO_UNROLL for (int a = 0; a < WR; ++a) {
          __m256i dot;
          if constexpr (F == WeightFormat::Int4) {
            const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offset + b * 8));
            dot = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv[a], xv), ones), off);
          } else {
            dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[a], _mm256_sign_epi8(xv, wv[a])), ones);
          }
          acc[a][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws[a] * x_scale), acc[a][r]);
        }
      }
    }
  }
  LEGO_UNROLL for (int a = 0; a < WR; ++a) {
    LEGO_UNROLL for (int r = 0; r < R; ++r) out[r * out_stride + a] = hsum(acc[a][r]);
  }
}

template <WeightFormat F>
LEGO_AVX2 void quant_avx2(const uint8_t* w, const QuantFormat& f, int64_t n, int64_t k, const float* x, int64_t m,
                          float* y) {
  const int64_t row_bytes = f.row_bytes(k);
  quant_product<F>(n, k, x, m, false, [&](auto wr, auto rr, int64_t i, const int8_t* xq, const float* xs,
                                                         const int32_t* off, int64_t r) {
    quant_tile<F, decltype(wr)::value, decltype(rr)::value>(w + i * row_bytes, row_bytes, f.group, k, xq, xs, off,
                                                            y + r * n + i, n);
  });
}

// ---- Panels: 8 rows interleaved, for AVX2 -----------------------------------------------------------
// Per panel of 8 rows and per 32-column sub-block: the 8 rows' float16 scales (16 bytes), then registers
// of 32 bytes whose 32-bit lane i holds row i, 4 bytes of its sub-block: byte t of register r is byte
// 4r + t of the row's stored sub-block. int8: 8 registers, column 4r + t. int4: 4 registers, column 4r + t
// in the low nibble and column 16 + 4r + t in the high one (the stored values, q + 8). One multiply-add of
// a register with 4 activations broadcast to every lane adds to all 8 rows' dots at once, so a sub-block
// costs one conversion and one scaling for 8 rows, and a panel is one stream of memory.
constexpr int64_t kPanelRows = 8;

constexpr int64_t sub_block_bytes(WeightFormat f) { return f == WeightFormat::Int4 ? 16 : kQ; }
constexpr int64_t panel_sub_bytes(WeightFormat f) { return 16 + kPanelRows * sub_block_bytes(f); }

void pack_rows(const uint8_t* w, const QuantFormat& f, int64_t n, int64_t k, uint8_t* out) {
  const int64_t row_bytes = f.row_bytes(k);
  const int64_t subs = k / kQ;
  const int64_t block_bytes = f.block_bytes();
  const int64_t value_bytes = sub_block_bytes(f.format);
  const int64_t sub_bytes = panel_sub_bytes(f.format);
  parallel_rows(n / kPanelRows, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) {
      for (int64_t s = 0; s < subs; ++s) {
        uint8_t* o = out + (panel * subs + s) * sub_bytes;
        const int64_t group = s * kQ / f.group, within = s * kQ % f.group / kQ;
        for (int64_t i = 0; i < kPanelRows; ++i) {
          const uint8_t* block = w + (panel * kPanelRows + i) * row_bytes + group * block_bytes;
          std::memcpy(o + 2 * i, block, 2);
          const uint8_t* values = block + 2 + within * value_bytes;
          for (int64_t r = 0; r < value_bytes / 4; ++r) std::memcpy(o + 16 + r * 32 + i * 4, values + 4 * r, 4);
        }
      }
    }
  });
}

void panels_portable(const uint8_t* packed, WeightFormat f, int64_t n, int64_t k, const float* x, int64_t m,
                     float* y) {
  const auto a = quantize_activations(x, m, k);
  const int64_t subs = k / kQ;
  const int64_t sub_bytes = panel_sub_bytes(f);
  parallel_rows(n / kPanelRows, [&](int64_t begin, int64_t end) {
    uint8_t values[kQ];
    int8_t vals[kQ];
    for (int64_t panel = begin; panel < end; ++panel) {
      for (int64_t r = 0; r < m; ++r) {
        float sum[kPanelRows] = {};
        for (int64_t s = 0; s < subs; ++s) {
          const uint8_t* o = packed + (panel * subs + s) * sub_bytes;
          const int8_t* xq = a.q.data() + r * k + s * kQ;
          for (int64_t i = 0; i < kPanelRows; ++i) {
            for (int64_t reg = 0; reg < sub_block_bytes(f) / 4; ++reg) std::memcpy(values + 4 * reg, o + 16 + reg * 32 + i * 4, 4);
            unpack_portable(values, f, vals);
            int32_t dot = 0;
            for (int64_t j = 0; j < kQ; ++j) dot += static_cast<int32_t>(vals[j]) * xq[j];
            sum[i] += static_cast<float>(dot) * (half_to_float(o + 2 * i) * a.scale[static_cast<size_t>(r * subs + s)]);
          }
        }
        for (int64_t i = 0; i < kPanelRows; ++i) y[r * n + panel * kPanelRows + i] = sum[i];
      }
    }
  });
}

#ifdef LEGO_X86
// One panel (8 weight rows) against R rows of activations. int4: `offset` holds -8 × each sub-block's
// activation sum (the stored nibbles are q + 8); the 8 multiply-adds of a sub-block sum in int16 (each
// pair at most 2 · 15 · 128). int8: |w| times x with w's sign (pairs up to 2 · 128 · 127), each register's
// pairs widened to int32 before they are summed.
//
// Prefetch: each sub-block fetches the one 8 sub-blocks ahead. A decoding step (one row) leaves it out on
// AVX-512 CPUs: on Zen 4 the hardware prefetchers follow the panels' one stream better alone (a 7B layer's
// int8 products read 49-52 GB/s without it, 34-47 with it; int4 47-49 against 33-40; bench/cpu_kernels
// --rows 1, alternating runs). A prompt's 8 rows keep it there too: without it, the 7B prompt of 32 tokens
// took 12-25 % longer.
template <WeightFormat F, int R, bool Prefetch>
LEGO_AVX2 void panel_tile(const uint8_t* panel, int64_t subs, const int8_t* xq, const float* xs,
                          const int32_t* offset, float* out, int64_t out_stride) {
  constexpr int64_t sub_bytes = panel_sub_bytes(F);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t k = subs * kQ;
  __m256 acc[R];
  LEGO_UNROLL for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const uint8_t* o = panel;
  for (int64_t s = 0; s < subs; ++s, o += sub_bytes) {
    if constexpr (Prefetch) {
      for (int64_t line = 0; line < sub_bytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(o) + 8 * sub_bytes + line, _MM_HINT_T0);
      }
    }
    const int8_t* x[R];  // read 4 activations at a time, broadcast to every lane
    LEGO_UNROLL for (int r = 0; r < R; ++r) x[r] = xq + r * k + s * kQ;
    __m256i dot[R];
    if constexpr (F == WeightFormat::Int4) {
      __m256i sum16[R];
      LEGO_UNROLL for (int reg = 0; reg < 4; ++reg) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o + 16 + reg * 32));
        const __m256i lo = _mm256_and_si256(raw, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        LEGO_UNROLL for (int r = 0; r < R; ++r) {
          int32_t a, b;
          std::memcpy(&a, x[r] + 4 * reg, 4);
          std::memcpy(&b, x[r] + 16 + 4 * reg, 4);
          const __m256i both = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(a)),
                                                _mm256_maddubs_epi16(hi, _mm256_set1_epi32(b)));
          sum16[r] = reg == 0 ? both : _mm256_add_epi16(sum16[r], both);
        }
      }
      LEGO_UNROLL for (int r = 0; r < R; ++r) {
        dot[r] = _mm256_add_epi32(_mm256_madd_epi16(sum16[r], ones), _mm256_set1_epi32(offset[r * subs + s]));
      }
    } else {
      LEGO_UNROLL for (int reg = 0; reg < 8; ++reg) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o + 16 + reg * 32));
        const __m256i aw = _mm256_sign_epi8(wv, wv);
        LEGO_UNROLL for (int r = 0; r < R; ++r) {
          int32_t a;
          std::memcpy(&a, x[r] + 4 * reg, 4);
          const __m256i pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(a), wv)), ones);
          dot[r] = reg == 0 ? pairs : _mm256_add_epi32(dot[r], pairs);
        }
      }
    }
    const __m256 scales = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o)));
    LEGO_UNROLL for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(scales, _mm256_set1_ps(xs[r * subs + s]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), scale, acc[r]);
    }
  }
  LEGO_UNROLL for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * out_stride, acc[r]);
}

// One panel against the m rows of activations, 4 at a time.
template <WeightFormat F, bool Prefetch>
LEGO_AVX2 void panel_rows(const uint8_t* panel, int64_t subs, const int8_t* xq, const float* xs,
                          const int32_t* offset, int64_t m, float* out, int64_t out_stride) {
  const int64_t k = subs * kQ;
  for (int64_t r = 0; r < m; r += 4) {
    const int8_t* x = xq + r * k;
    const float* s = xs + r * subs;
    const int32_t* off = offset == nullptr ? nullptr : offset + r * subs;
    float* y = out + r * out_stride;
    switch (std::min<int64_t>(4, m - r)) {
      case 4: panel_tile<F, 4, Prefetch>(panel, subs, x, s, off, y, out_stride); break;
      case 3: panel_tile<F, 3, Prefetch>(panel, subs, x, s, off, y, out_stride); break;
      case 2: panel_tile<F, 2, Prefetch>(panel, subs, x, s, off, y, out_stride); break;
      default: panel_tile<F, 1, Prefetch>(panel, subs, x, s, off, y, out_stride); break;
    }
  }
}

template <WeightFormat F>
void panels_avx2(const uint8_t* packed, int64_t n, int64_t k, const float* x, int64_t m, float* y, bool prefetch) {
  const auto a = quantize_activations(x, m, k);
  const int64_t subs = k / kQ;
  std::vector<int32_t> offset;
  if constexpr (F == WeightFormat::Int4) {
    offset.resize(static_cast<size_t>(m * subs));
    for (size_t b = 0; b < offset.size(); ++b) {
      int32_t sum = 0;
      for (int64_t j = 0; j < kQ; ++j) sum += a.q[b * kQ + static_cast<size_t>(j)];
      offset[b] = -8 * sum;
    }
  }
  const auto run = [&](auto prefetch_tag) {
    parallel_rows(n / kPanelRows, [&](int64_t begin, int64_t end) {
      for (int64_t panel = begin; panel < end; ++panel) {
        panel_rows<F, decltype(prefetch_tag)::value>(packed + panel * subs * panel_sub_bytes(F), subs, a.q.data(),
                                                     a.scale.data(), offset.empty() ? nullptr : offset.data(), m,
                                                     y + panel * kPanelRows, n);
      }
    });
  };
  if (prefetch) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}
#endif

// ---- AVX-512: VNNI's byte dot products (vpdpbusd) and BF16's pair dot products (vdpbf16ps) -------------

// Round to the nearest bf16, ties to even (finite inputs; a NaN stays a NaN).
uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | ((bits & 0xFFFF) ? 0x40 : 0));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// GCC 12's AVX-512 headers pass _mm512_undefined_*() as the merge operand of unmasked intrinsics, which
// its own -Wuninitialized (or -Wmaybe-uninitialized) reports once they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// One row of w against one row of activations split in two bf16 parts (Lo, as in bf16_tile_512), for a
// decoding step. Four accumulators, each taking every fourth 32 columns, so that consecutive vdpbf16ps do
// not wait on each other's result.
//
// A thread reads its rows one after another, with no software prefetch: one sequential stream, which the
// hardware prefetchers follow on their own. On 2 Zen 4 cores this read a 7B layer at 50-51 GB/s where the
// 4-row tiles, each prefetching the next tile's rows, read 39-42 (bench/cpu_kernels --rows 1), and a
// prefetch 1 or 4 KiB ahead within the stream read less; `lego generate` on a 7B bf16 model went from
// 370-442 to 309-389 ms/token (6 alternating runs each). The AVX2 tiles keep their prefetch: it paid on an
// AVX2 CPU.
template <bool Lo>
LEGO_AVX512 void bf16_row_512(const uint16_t* w, int64_t k, const uint16_t* hi, const uint16_t* lo, float* out) {
  constexpr int U = 4;
  __m512 acc_hi[U], acc_lo[U];
  for (int u = 0; u < U; ++u) acc_hi[u] = acc_lo[u] = _mm512_setzero_ps();
  const auto step = [&](int64_t j, int u) LEGO_AVX512 {
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + j);
    acc_hi[u] = _mm512_dpbf16_ps(acc_hi[u], wv, (__m512bh)_mm512_loadu_si512(hi + j));
    if constexpr (Lo) acc_lo[u] = _mm512_dpbf16_ps(acc_lo[u], wv, (__m512bh)_mm512_loadu_si512(lo + j));
  };
  int64_t j = 0;
  for (; j + 32 * U <= k; j += 32 * U) {
    LEGO_UNROLL
    for (int u = 0; u < U; ++u) step(j + 32 * u, u);
  }
  for (; j < k; j += 32) step(j, 0);
  __m512 sum = _mm512_add_ps(acc_hi[0], acc_lo[0]);
  for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, _mm512_add_ps(acc_hi[u], acc_lo[u]));
  *out = _mm512_reduce_add_ps(sum);
}

// WR rows of w against R rows of activations split in two bf16 parts (Lo: the second part is not all zero,
// as it is for activations that are bf16 values, a bf16 model's); 32 columns per step. Each tile prefetches
// the next tile's rows, as the AVX2 tiles do. For prompts and batches (2 rows of activations or more).
template <int WR, int R, bool Lo>
LEGO_AVX512 void bf16_tile_512(const uint16_t* w, int64_t k, const uint16_t* hi, const uint16_t* lo, float* out,
                               int64_t out_stride) {
  __m512 acc_hi[WR][R], acc_lo[WR][R];
  for (int a = 0; a < WR; ++a) {
    for (int r = 0; r < R; ++r) acc_hi[a][r] = acc_lo[a][r] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < k; j += 32) {
    for (int a = 0; a < WR; ++a) {
      _mm_prefetch(reinterpret_cast<const char*>(w + (a + WR) * k + j), _MM_HINT_T0);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + a * k + j);
      for (int r = 0; r < R; ++r) {
        acc_hi[a][r] = _mm512_dpbf16_ps(acc_hi[a][r], wv, (__m512bh)_mm512_loadu_si512(hi + r * k + j));
        if constexpr (Lo) {
          acc_lo[a][r] = _mm512_dpbf16_ps(acc_lo[a][r], wv, (__m512bh)_mm512_loadu_si512(lo + r * k + j));
        }
      }
    }
  }
  for (int a = 0; a < WR; ++a) {
    for (int r = 0; r < R; ++r) {
      out[r * out_stride + a] = _mm512_reduce_add_ps(_mm512_add_ps(acc_hi[a][r], acc_lo[a][r]));
    }
  }
}

LEGO_AVX512 void bf16_avx512(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y) {
  std::vector<uint16_t> hi(static_cast<size_t>(m * k)), lo(static_cast<size_t>(m * k));
  bool any_lo = false;
  for (int64_t j = 0; j < m * k; ++j) {
    hi[static_cast<size_t>(j)] = float_to_bf16(x[j]);
    lo[static_cast<size_t>(j)] = float_to_bf16(x[j] - bf16_to_float(hi[static_cast<size_t>(j)]));
    any_lo = any_lo || (lo[static_cast<size_t>(j)] & 0x7FFF) != 0;
  }
  const auto run = [&](auto lo_tag) {
    constexpr bool Lo = decltype(lo_tag)::value;
    parallel_rows(n, [&](int64_t begin, int64_t end) {
      if (m == 1) {
        for (int64_t i = begin; i < end; ++i) bf16_row_512<Lo>(w + i * k, k, hi.data(), lo.data(), y + i);
        return;
      }
      for_each_tile(begin, end, m, [&](auto wr, int64_t i) {
        for_each_row_pair(m, [&](auto rr, int64_t r) {
          constexpr int WR = decltype(wr)::value, R = decltype(rr)::value;
          bf16_tile_512<WR, R, Lo>(w + i * k, k, hi.data() + r * k, lo.data() + r * k, y + r * n + i, n);
        });
      });
    });
  };
  if (any_lo) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// WR rows of int8 or int4 weights against R rows of int8 activations, one vpdpbusd (unsigned × signed
// bytes, four products summed into each int32 lane, exactly) per sub-block and row. int8: |w| times x with
// w's sign. int4: the stored nibbles (0..15) times x, the accumulator starting from -8 × the activations'
// sums (int4_offsets, negated).
template <WeightFormat F, int WR, int R>
LEGO_AVX512 void vnni_tile(const uint8_t* w, int64_t row_bytes, int64_t group, int64_t k, const int8_t* xq,
                           const float* xs, const int32_t* neg_offset, float* out, int64_t out_stride) {
  constexpr int64_t sub_bytes = F == WeightFormat::Int4 ? 16 : kQ;
  const int64_t block_bytes = 2 + group / kQ * sub_bytes;
  const int64_t blocks_per_row = k / kQ;
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i upper_by_4 = _mm256_set_epi64x(4, 4, 0, 0);
  __m256 acc[WR][R];
  for (int a = 0; a < WR; ++a) {
    for (int r = 0; r < R; ++r) acc[a][r] = _mm256_setzero_ps();
  }
  for (int64_t g = 0, col = 0; col < k; ++g) {
    float ws[WR];
    const uint8_t* p[WR];
    for (int a = 0; a < WR; ++a) {
      p[a] = w + a * row_bytes + g * block_bytes;
      ws[a] = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(p[a]));
      p[a] += 2;
    }
    for (int64_t s = 0; s < group; s += kQ, col += kQ) {
      __m256i wv[WR];
      for (int a = 0; a < WR; ++a) {
        _mm_prefetch(reinterpret_cast<const char*>(p[a]) + WR * row_bytes, _MM_HINT_T0);  // one per sub-block
        if constexpr (F == WeightFormat::Int4) {
          const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[a])));
          wv[a] = _mm256_and_si256(_mm256_srlv_epi64(both, upper_by_4), low);
        } else {
          wv[a] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[a]));
        }
        p[a] += sub_bytes;
      }
      for (int r = 0; r < R; ++r) {
        const int64_t b = r * blocks_per_row + col / kQ;
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + r * k + col));
        const float x_scale = xs[b];
        for (int a = 0; a < WR; ++a) {
          __m256i dot;
          if constexpr (F == WeightFormat::Int4) {
            const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(neg_offset + b * 8));
            dot = _mm256_dpbusd_epi32(start, wv[a], xv);
          } else {
            dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(wv[a]), _mm256_sign_epi8(xv, wv[a]));
          }
          acc[a][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(ws[a] * x_scale), acc[a][r]);
        }
      }
    }
  }
  for (int a = 0; a < WR; ++a) {
    for (int r = 0; r < R; ++r) out[r * out_stride + a] = hsum(acc[a][r]);
  }
}

template <WeightFormat F>
LEGO_AVX512 void quant_avx512(const uint8_t* w, const QuantFormat& f, int64_t n, int64_t k, const float* x, int64_t m,
                              float* y) {
  const int64_t row_bytes = f.row_bytes(k);
  quant_product<F>(n, k, x, m, true, [&](auto wr, auto rr, int64_t i, const int8_t* xq, const float* xs,
                                                        const int32_t* neg_off, int64_t r) {
    vnni_tile<F, decltype(wr)::value, decltype(rr)::value>(w + i * row_bytes, row_bytes, f.group, k, xq, xs, neg_off,
                                                           y + r * n + i, n);
  });
}
#pragma GCC diagnostic pop
#endif

}  // namespace

Isa best_isa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("LEGO_CPU_KERNELS");
    Isa best = Isa::Portable;
#ifdef LEGO_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      best = Isa::Avx2;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
          __builtin_cpu_supports("avx512bf16")) {
        best = Isa::Avx512;
      }
    }
#endif
    if (forced != nullptr && std::string(forced) == "portable") return Isa::Portable;
    if (forced != nullptr && std::string(forced) == "avx2") return std::min(best, Isa::Avx2);
    return best;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "portable";
  }
}

void matmul_bf16(const uint16_t* w, int64_t n, int64_t k, const float* x, int64_t m, float* y, Isa isa) {
#ifdef LEGO_X86
  if (isa == Isa::Avx512 && k % 32 == 0) return bf16_avx512(w, n, k, x, m, y);
  if (isa >= Isa::Avx2 && k % 16 == 0) return bf16_avx2(w, n, k, x, m, y);
#endif
  (void)isa;
  bf16_portable(w, n, k, x, m, y);
}

void matmul_quant(const uint8_t* w, const QuantFormat& format, int64_t n, int64_t k, const float* x, int64_t m,
                  float* y, Isa isa) {
  format.check("matmul_quant");
  if (k % format.group != 0) throw Error(ErrorKind::InvalidArgument, "matmul_quant: pad k to whole groups");
#ifdef LEGO_X86
  if (isa == Isa::Avx512) {
    if (format.format == WeightFormat::Int8) return quant_avx512<WeightFormat::Int8>(w, format, n, k, x, m, y);
    return quant_avx512<WeightFormat::Int4>(w, format, n, k, x, m, y);
  }
  if (isa == Isa::Avx2) {
    if (format.format == WeightFormat::Int8) return quant_avx2<WeightFormat::Int8>(w, format, n, k, x, m, y);
    return quant_avx2<WeightFormat::Int4>(w, format, n, k, x, m, y);
  }
#endif
  (void)isa;
  quant_portable(w, format, n, k, x, m, y);
}

bool panels_apply(const QuantFormat& format, int64_t n, int64_t k, Isa isa) {
  return isa >= Isa::Avx2 && n > 0 && n % kPanelRows == 0 && k > 0 && k % format.group == 0;
}

int64_t panels_bytes(const QuantFormat& format, int64_t n, int64_t k) {
  return n / kPanelRows * (k / kQ) * panel_sub_bytes(format.format);
}

void pack_panels(const uint8_t* w, const QuantFormat& format, int64_t n, int64_t k, uint8_t* out) {
  format.check("pack_panels");
  if (n <= 0 || n % kPanelRows != 0 || k <= 0 || k % format.group != 0) {
    throw Error(ErrorKind::InvalidArgument, "pack_panels: rows in multiples of 8 and whole groups, not [" +
                                                std::to_string(n) + ", " + std::to_string(k) + "]");
  }
  pack_rows(w, format, n, k, out);
}

void matmul_panels(const uint8_t* packed, const QuantFormat& format, int64_t n, int64_t k, const float* x, int64_t m,
                   float* y, Isa isa) {
#ifdef LEGO_X86
  if (isa >= Isa::Avx2) {
    const bool prefetch = isa != Isa::Avx512 || m > 1;  // see panel_tile
    if (format.format == WeightFormat::Int8) return panels_avx2<WeightFormat::Int8>(packed, n, k, x, m, y, prefetch);
    return panels_avx2<WeightFormat::Int4>(packed, n, k, x, m, y, prefetch);
  }
#endif
  (void)isa;
  panels_portable(packed, format.format, n, k, x, m, y);
}

}  // namespace lego::llm::kernels
