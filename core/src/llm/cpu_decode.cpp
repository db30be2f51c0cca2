// The one-token decoding step on the CPU over raw buffers (LlamaModelImpl::forward_cpu_decode).
//
// A decoding step of a small model spends a third of its time outside the matrix products when it runs
// as libtorch operators: about thirty dispatches per layer (norm, rotary, cache copy, attention, SiLU,
// products, adds, dtype casts), each with its allocation, while the second thread waits. Here a layer is
// its four products (the decoding kernels of quant.h, shared among the threads) and a handful of loops over
// a few thousand floats, with attention (one query per row) computed directly from the cache.
//
// The loops round where the operators they replace round: every activation is a float holding a value
// of the model's dtype (bf16 or float32), rounded to it after each operation the reference performs in
// that dtype, so that a bf16 model's step equals the operator form up to float summation order (the
// norm's mean, attention's sums, the exponential) and bf16 rounding.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "lego/llm/llama.h"
#include "lego/llm/quant.h"

namespace lego::llm {
namespace {

bool cpu_decode_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LEGO_CPU_DECODE");
    return v == nullptr || std::string(v) != "operators";
  }();
  return enabled;
}

// A value rounded to the activations' dtype (round to nearest even, as libtorch casts).
template <bool Bf16>
inline float round_to(float v) {
  if constexpr (Bf16) {
    return static_cast<float>(c10::BFloat16(v));
  } else {
    return v;
  }
}

// One projection of a layer: bf16 dense rows or quantised blocks, in up to three parts whose outputs
// are laid side by side (q, k and v, or gate and up, of a model whose projections are not fused into one
// tensor), with its bias (float32, rounded to the activations' dtype) when it has one.
struct Projection {
  struct Part {
    const uint16_t* dense = nullptr;
    const uint8_t* blocks = nullptr;
    int64_t n = 0;
    const uint8_t* panels = nullptr;  // as panels (QuantLinear::panels), used instead of blocks
  };
  std::array<Part, 3> parts;
  int count = 0;
  QuantFormat format;
  int64_t n = 0, k = 0;  // n: all parts' outputs
  torch::Tensor bias;

  // y [m, n] = x [m, k] · w^T in float32: bf16 weights take all the rows in one call, quantised ones
  // kDecodeRows rows at a time.
  void operator()(const float* x, int64_t m, float* y, kernels::Isa isa) const {
    std::vector<float> part_out;
    int64_t column = 0;
    for (int c = 0; c < count; ++c) {
      const auto& part = parts[static_cast<size_t>(c)];
      // One part, or one row: the kernel writes in place; else each row of the part is copied to its columns.
      const bool direct = count == 1 || m == 1;
      if (!direct) part_out.resize(static_cast<size_t>(m * part.n));
      float* out = direct ? y + column : part_out.data();
      if (part.dense != nullptr) {  // all the rows at once: a prompt's take the panel product
        kernels::matmul_bf16(part.dense, part.n, k, x, m, out, isa);
      }
      for (int64_t r = 0; r < m && part.dense == nullptr; r += kDecodeRows) {
        const int64_t rows = std::min(kDecodeRows, m - r);
        if (part.panels != nullptr) {
          kernels::matmul_panels(part.panels, format, part.n, k, x + r * k, rows, out + r * part.n, isa);
        } else {
          kernels::matmul_quant(part.blocks, format, part.n, k, x + r * k, rows, out + r * part.n, isa);
        }
      }
      if (!direct) {
        for (int64_t r = 0; r < m; ++r) {
          std::memcpy(y + r * n + column, part_out.data() + r * part.n, static_cast<size_t>(part.n) * sizeof(float));
        }
      }
      column += part.n;
    }
  }
};

// A projection over dense weights [n_i, k] that the kernels take (bf16, contiguous, on the CPU), with
// their biases (all or none); false otherwise.
bool dense_projection(const std::vector<const torch::Tensor*>& weights, const std::vector<const torch::Tensor*>& biases,
                      int64_t k, torch::ScalarType dtype, Projection& out) {
  out.k = k;
  std::vector<torch::Tensor> bias_parts;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& w = *weights[i];
    if (!w.defined() || !w.is_cpu() || w.scalar_type() != torch::kBFloat16 || !w.is_contiguous() || w.dim() != 2 ||
        w.size(1) != k || k % 16 != 0) {
      return false;
    }
    out.parts[i] = {reinterpret_cast<const uint16_t*>(w.data_ptr()), nullptr, w.size(0)};
    out.n += w.size(0);
    if (i < biases.size() && biases[i]->defined()) bias_parts.push_back(*biases[i]);
  }
  out.count = static_cast<int>(weights.size());
  if (!bias_parts.empty()) {
    if (bias_parts.size() != weights.size()) return false;
    out.bias = torch::cat(bias_parts).to(dtype).to(torch::kFloat32).contiguous();
  }
  return true;
}

bool quant_projection(QuantLinear& layer, torch::ScalarType dtype, Projection& out) {
  if (!layer || !layer->qweight.is_cpu() || !layer->qweight.is_contiguous() ||
      layer->format().padded(layer->in_features()) != layer->in_features()) {
    return false;  // a padded last group: the operator path pads the activations
  }
  const auto panels = layer->panels();
  out.parts[0] = {nullptr, layer->qweight.data_ptr<uint8_t>(), layer->out_features(),
                  panels.defined() ? panels.data_ptr<uint8_t>() : nullptr};
  out.count = 1;
  out.format = layer->format();
  out.n = layer->out_features();
  out.k = layer->in_features();
  if (layer->bias.defined()) out.bias = layer->bias.to(dtype).to(torch::kFloat32).contiguous();
  return true;
}

struct LayerPlan {
  Projection qkv, o, gate_up, down;
  const void* input_norm = nullptr;  // weights in the activations' dtype
  const void* post_norm = nullptr;
};

// y = round(round(y) + bias) per row, as the operator form adds a bias after rounding the product.
template <bool Bf16>
void finish(float* y, int64_t m, const Projection& p) {
  const float* bias = p.bias.defined() ? p.bias.data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < m; ++r) {
    float* row = y + r * p.n;
    for (int64_t i = 0; i < p.n; ++i) {
      row[i] = round_to<Bf16>(row[i]);
      if (bias != nullptr) row[i] = round_to<Bf16>(row[i] + bias[i]);
    }
  }
}

// A value of the activations' storage type (float or c10::BFloat16) as float.
template <typename T>
inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// RMSNorm as RMSNormImpl computes it: float32 normalisation, rounded, times the weight (bf16: rounded
// again; float32: the fused kernel's x * rstd * w).
template <bool Bf16, typename T>
void rms_norm(const float* x, int64_t m, int64_t width, const T* weight, double eps, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * width;
    float* o = out + r * width;
    double squares = 0.0;
    for (int64_t i = 0; i < width; ++i) squares += static_cast<double>(xr[i]) * xr[i];
    const auto rstd = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(width) + eps));
    for (int64_t i = 0; i < width; ++i) o[i] = round_to<Bf16>(load(weight, i) * round_to<Bf16>(xr[i] * rstd));
  }
}

// Rotates q and k of one row ([heads + kv, D] at the front of `qkv`), writes k and v into slot `slot` of
// the cache and q (rotated) into `q_out` [heads, D]. out = round(round(x cos) + round(swap(x) sin)), the
// operator form's three rounded operations; sin carries the first half's sign.
template <bool Bf16, typename T>
void rotate_into_cache(const float* qkv, const float* cos, const float* sin, int64_t heads, int64_t kv, int64_t d,
                       T* keys, T* values, int64_t capacity, int64_t slot, float* q_out) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads + kv; ++h) {
    const float* x = qkv + h * d;
    float rotated[512];
    for (int64_t i = 0; i < d; ++i) {
      const float swapped = x[i < half ? i + half : i - half];
      rotated[i] = round_to<Bf16>(round_to<Bf16>(x[i] * cos[i]) + round_to<Bf16>(swapped * sin[i]));
    }
    if (h < heads) {
      std::memcpy(q_out + h * d, rotated, static_cast<size_t>(d) * sizeof(float));
    } else {
      T* dst = keys + ((h - heads) * capacity + slot) * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(rotated[i]);
    }
  }
  for (int64_t g = 0; g < kv; ++g) {
    const float* v = qkv + (heads + kv + g) * d;
    T* dst = values + (g * capacity + slot) * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(v[i]);
  }
}

// One query per row and head against the row's cached keys 0..last (those key_valid marks, and `last`
// itself), as libtorch's CPU attention computes it: scores and softmax in float32, the unnormalised weights
// rounded to the inputs' dtype before they weigh the values, the sum times the reciprocal of the weights'
// float32 total, rounded. Rows × heads are shared among the threads.
template <bool Bf16, typename T>
void attend(const float* q, const T* keys, const T* values, const bool* key_valid, int64_t valid_stride,
            int64_t batch, int64_t heads, int64_t kv, int64_t d, int64_t capacity, int64_t last, float* out) {
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int64_t group = heads / kv;
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(last + 1));
    std::vector<float> acc(static_cast<size_t>(d));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads, g = h / group;
      const float* qh = q + (b * heads + h) * d;
      const T* k = keys + (b * kv + g) * capacity * d;
      const T* v = values + (b * kv + g) * capacity * d;
      const bool* valid = key_valid != nullptr ? key_valid + b * valid_stride : nullptr;
      float top = -INFINITY;
      for (int64_t j = 0; j <= last; ++j) {
        if (valid != nullptr && !valid[j] && j != last) {
          scores[static_cast<size_t>(j)] = -INFINITY;
          continue;
        }
        const T* kj = k + j * d;
        float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i + 8 <= d; i += 8) {
          for (int l = 0; l < 8; ++l) lanes[l] += qh[i + l] * load(kj, i + l);
        }
        float dot = 0.f;
        for (int64_t i = d / 8 * 8; i < d; ++i) dot += qh[i] * load(kj, i);
        for (float lane : lanes) dot += lane;
        const float s = dot * scale;
        scores[static_cast<size_t>(j)] = s;
        top = std::max(top, s);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float total = 0.f;
      for (int64_t j = 0; j <= last; ++j) {
        const float s = scores[static_cast<size_t>(j)];
        if (s == -INFINITY) continue;
        const float e = std::exp(s - top);
        total += e;
        const float p = round_to<Bf16>(e);  // libtorch's attention weighs the values in the inputs' dtype
        const T* vj = v + j * d;
        for (int64_t i = 0; i < d; ++i) acc[static_cast<size_t>(i)] += p * load(vj, i);
      }
      const float inverse = 1.f / total;
      float* o = out + (b * heads + h) * d;
      for (int64_t i = 0; i < d; ++i) o[i] = round_to<Bf16>(acc[static_cast<size_t>(i)] * inverse);
    }
  });
}

template <bool Bf16, typename T>
void run_layers(const std::vector<LayerPlan>& plans, const LlamaOptions& options, KvCache& cache, float* residual,
                int64_t batch, const float* cos, const float* sin, const bool* key_valid, int64_t valid_stride) {
  const int64_t width = options.hidden_size();
  const int64_t heads = options.num_heads();
  const int64_t kv = options.kv_heads();
  const int64_t d = options.head_width();
  const int64_t m = options.intermediate_size();
  const int64_t slot = cache.length();
  const int64_t capacity = cache.capacity();
  const double eps = options.rms_norm_eps();
  const auto isa = kernels::best_isa();
  std::vector<float> normed(static_cast<size_t>(batch * width));
  std::vector<float> qkv(static_cast<size_t>(batch * (heads + 2 * kv) * d));
  std::vector<float> q(static_cast<size_t>(batch * heads * d));
  std::vector<float> attn(static_cast<size_t>(batch * heads * d));
  std::vector<float> proj(static_cast<size_t>(batch * std::max(width, 2 * m)));
  std::vector<float> mid(static_cast<size_t>(batch * width));
  std::vector<float> act(static_cast<size_t>(batch * m));
  for (size_t i = 0; i < plans.size(); ++i) {
    const auto& p = plans[i];
    T* keys = static_cast<T*>(cache.layer_keys(static_cast<int64_t>(i)).data_ptr());
    T* values = static_cast<T*>(cache.layer_values(static_cast<int64_t>(i)).data_ptr());
    rms_norm<Bf16>(residual, batch, width, static_cast<const T*>(p.input_norm), eps, normed.data());
    p.qkv(normed.data(), batch, qkv.data(), isa);
    finish<Bf16>(qkv.data(), batch, p.qkv);
    for (int64_t b = 0; b < batch; ++b) {
      rotate_into_cache<Bf16>(qkv.data() + b * p.qkv.n, cos + b * d, sin + b * d, heads, kv, d,
                              keys + b * kv * capacity * d, values + b * kv * capacity * d, capacity, slot,
                              q.data() + b * heads * d);
    }
    attend<Bf16>(q.data(), keys, values, key_valid, valid_stride, batch, heads, kv, d, capacity, slot, attn.data());
    p.o(attn.data(), batch, proj.data(), isa);
    finish<Bf16>(proj.data(), batch, p.o);
    for (size_t j = 0; j < mid.size(); ++j) mid[j] = round_to<Bf16>(residual[j] + proj[j]);
    rms_norm<Bf16>(mid.data(), batch, width, static_cast<const T*>(p.post_norm), eps, normed.data());
    p.gate_up(normed.data(), batch, proj.data(), isa);
    finish<Bf16>(proj.data(), batch, p.gate_up);
    for (int64_t b = 0; b < batch; ++b) {
      const float* gate = proj.data() + b * 2 * m;
      const float* up = gate + m;
      float* a = act.data() + b * m;
      for (int64_t j = 0; j < m; ++j) {
        const float silu = round_to<Bf16>(gate[j] / (1.f + std::exp(-gate[j])));
        a[j] = round_to<Bf16>(silu * up[j]);
      }
    }
    p.down(act.data(), batch, proj.data(), isa);
    finish<Bf16>(proj.data(), batch, p.down);
    for (size_t j = 0; j < mid.size(); ++j) residual[j] = round_to<Bf16>(mid[j] + proj[j]);
  }
}

}  // namespace

torch::Tensor LlamaModelImpl::forward_cpu_decode(const torch::Tensor& input_embeds, const AttentionContext& ctx) {
  const auto dtype = input_embeds.scalar_type();
  if (!cpu_decode_enabled() || !input_embeds.is_cpu() || torch::GradMode::is_enabled() || input_embeds.dim() != 3 ||
      input_embeds.size(1) != 1 || ctx.cache == nullptr || ctx.slot.defined() ||
      (dtype != torch::kFloat32 && dtype != torch::kBFloat16) || !ctx.positions.defined() ||
      options_.head_width() > 512 || options_.num_heads() % options_.kv_heads() != 0) {
    return {};
  }
  const int64_t batch = input_embeds.size(0);
  const int64_t width = options_.hidden_size();
  const int64_t heads = options_.num_heads();
  const int64_t kv = options_.kv_heads();
  const int64_t d = options_.head_width();
  const int64_t m = options_.intermediate_size();
  auto& cache = *ctx.cache;
  if (cache.batch() != batch || cache.length() >= cache.capacity()) return {};
  std::vector<LayerPlan> plans(layers->size());
  const auto norm_weight = [&](const RMSNorm& norm) -> const void* {
    const auto& w = norm->weight;
    if (w.scalar_type() != dtype || !w.is_cpu() || !w.is_contiguous() || w.numel() != width) return nullptr;
    return w.data_ptr();
  };
  for (size_t i = 0; i < layers->size(); ++i) {
    auto& layer = layers->at<LlamaDecoderLayerImpl>(i);
    auto& attn = *layer.self_attn;
    auto& mlp = *layer.mlp;
    auto& p = plans[i];
    const auto& keys = cache.layer_keys(static_cast<int64_t>(i));
    const auto& values = cache.layer_values(static_cast<int64_t>(i));
    if (keys.scalar_type() != dtype || values.scalar_type() != dtype || !keys.is_cpu() || !keys.is_contiguous() ||
        !values.is_contiguous()) {
      return {};
    }
    bool ok;
    if (options_.quantized()) {
      ok = quant_projection(attn.qkv_proj, dtype, p.qkv) && quant_projection(attn.o_proj_quant, dtype, p.o) &&
           quant_projection(mlp.gate_up_proj, dtype, p.gate_up) && quant_projection(mlp.down_proj_quant, dtype, p.down);
    } else {
      // Fused (views of one tensor) or not, q/k/v and gate/up are read where they lie: fusing on the CPU
      // would copy mapped weights.
      const auto& a = attn;
      ok = dense_projection({&a.q_proj->weight, &a.k_proj->weight, &a.v_proj->weight},
                            {&a.q_proj->bias, &a.k_proj->bias, &a.v_proj->bias}, width, dtype, p.qkv) &&
           dense_projection({&a.o_proj->weight}, {&a.o_proj->bias}, heads * d, dtype, p.o) &&
           dense_projection({&mlp.gate_proj->weight, &mlp.up_proj->weight}, {}, width, dtype, p.gate_up) &&
           dense_projection({&mlp.down_proj->weight}, {&mlp.down_proj->bias}, m, dtype, p.down) &&
           p.qkv.n == (heads + 2 * kv) * d && p.o.n == width && p.gate_up.n == 2 * m && p.down.n == width;
    }
    p.input_norm = norm_weight(layer.input_layernorm);
    p.post_norm = norm_weight(layer.post_attention_layernorm);
    if (!ok || p.input_norm == nullptr || p.post_norm == nullptr) return {};
  }
  if (ctx.positions.numel() != batch) return {};
  auto residual = input_embeds.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true).contiguous();
  // [B, 1, 1, D] at each row's position, rounded to the activations' dtype as the operator form's are.
  auto [cos_table, sin_table] = rotary_emb->tables(ctx.positions.view({batch, 1}), dtype, cache.length() + 1);
  const auto cos = cos_table.to(torch::kFloat32).contiguous();
  const auto sin = sin_table.to(torch::kFloat32).contiguous();
  torch::Tensor valid;
  if (ctx.key_valid.defined()) valid = ctx.key_valid.to(torch::kBool).contiguous();
  const bool* valid_ptr = valid.defined() ? valid.data_ptr<bool>() : nullptr;
  const int64_t valid_stride = valid.defined() ? valid.size(1) : 0;
  if (valid.defined() && (valid.dim() != 2 || valid.size(0) != batch || valid_stride <= cache.length())) return {};
  float* x = residual.data_ptr<float>();
  if (dtype == torch::kBFloat16) {
    run_layers<true, c10::BFloat16>(plans, options_, cache, x, batch, cos.data_ptr<float>(), sin.data_ptr<float>(),
                                    valid_ptr, valid_stride);
  } else {
    run_layers<false, float>(plans, options_, cache, x, batch, cos.data_ptr<float>(), sin.data_ptr<float>(), valid_ptr,
                             valid_stride);
  }
  cache.advance(1);
  return norm(residual.to(dtype));
}

}  // namespace lego::llm
