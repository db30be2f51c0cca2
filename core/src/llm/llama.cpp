#include "lego/llm/llama.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <limits>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "lego/sdk/nn/attention.h"

#ifdef LEGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "cuda/decode_kernels.h"
#endif

namespace lego::llm {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw Error(ErrorKind::InvalidArgument, "llm options: " + what);
}

nn::Linear make_linear(int64_t in, int64_t out, bool bias) {
  return nn::Linear(nn::LinearOptions(in, out).bias(bias));
}

// A dense projection: the module under autograd, else decode_linear (the CPU decoding kernel for a few
// rows of bf16, libtorch otherwise).
torch::Tensor project(nn::Linear& layer, const torch::Tensor& x) {
  if (torch::GradMode::is_enabled()) return layer(x);
  return decode_linear(x, layer->weight, layer->bias);
}

// [..., D] -> [..., D] with the two halves swapped. HF's rotate_half also negates the first half; that
// sign lives in the sin table instead, saving a kernel per call.
torch::Tensor swap_halves(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

LlamaOptions::LlamaOptions(int64_t vocab_size, int64_t hidden_size, int64_t intermediate_size,
                           int64_t num_layers, int64_t num_heads)
    : vocab_size_(vocab_size),
      hidden_size_(hidden_size),
      intermediate_size_(intermediate_size),
      num_layers_(num_layers),
      num_heads_(num_heads) {}

void LlamaOptions::validate() const {
  require(vocab_size_ > 0, "vocab_size must be positive, got " + std::to_string(vocab_size_));
  require(hidden_size_ > 0, "hidden_size must be positive, got " + std::to_string(hidden_size_));
  require(intermediate_size_ > 0,
          "intermediate_size must be positive, got " + std::to_string(intermediate_size_));
  require(num_layers_ > 0, "num_layers must be positive, got " + std::to_string(num_layers_));
  require(num_heads_ > 0, "num_heads must be positive, got " + std::to_string(num_heads_));
  require(num_kv_heads_ >= 0 && num_heads_ % kv_heads() == 0,
          "num_heads (" + std::to_string(num_heads_) + ") must be a multiple of num_kv_heads (" +
              std::to_string(kv_heads()) + ")");
  require(head_dim_ > 0 || hidden_size_ % num_heads_ == 0,
          "hidden_size (" + std::to_string(hidden_size_) + ") must be a multiple of num_heads (" +
              std::to_string(num_heads_) + ") when head_dim is not given");
  require(head_width() % 2 == 0, "head_dim must be even for rotary embeddings");
  require(rms_norm_eps_ > 0, "rms_norm_eps must be positive");
  require(rope_theta_ > 0, "rope_theta must be positive");
  require(rope_scaling_factor_ > 0, "rope_scaling_factor must be positive");
  require(max_position_ > 0, "max_position must be positive");
  if (quantized()) quant_format().check("llm options: weight_group");
  // Checked before anything is allocated: this libtorch aborts on a failed allocation.
  require_allocatable(2.0 * parameter_count(), "llm options: a model of " + std::to_string(parameter_count() / 1e9).substr(0, 6) +
                                                   "B parameters (vocab_size, hidden_size, intermediate_size, num_layers)");
}

double LlamaOptions::parameter_count() const {
  const double h = static_cast<double>(hidden_size_);
  const double q = static_cast<double>(num_heads_) * static_cast<double>(head_width());
  const double kv = static_cast<double>(kv_heads()) * static_cast<double>(head_width());
  const double attention = h * (q + 2 * kv) + q * h + (attention_bias_ ? q + 2 * kv : 0.0);
  const double mlp = 3.0 * h * static_cast<double>(intermediate_size_);
  const double layer = attention + mlp + 2 * h;
  const double embeddings = static_cast<double>(vocab_size_) * h * (tie_word_embeddings_ ? 1 : 2);
  return embeddings + static_cast<double>(num_layers_) * layer + h;
}

// ---------------------------------------------------------------------------------------------------------
KvCache::KvCache(const LlamaOptions& options, int64_t batch, int64_t capacity,
                 torch::TensorOptions tensor_options)
    : KvCache(options.num_layers(), batch, options.kv_heads(), capacity, options.head_width(), tensor_options) {}

KvCache::KvCache(int64_t layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_width,
                 torch::TensorOptions tensor_options)
    : batch_(batch), capacity_(capacity) {
  if (batch <= 0 || capacity <= 0) {
    throw Error(ErrorKind::InvalidArgument, "KvCache: batch and capacity must be positive, got " +
                                                std::to_string(batch) + " and " + std::to_string(capacity));
  }
  const double bytes = 2.0 * static_cast<double>(layers) * static_cast<double>(batch) * static_cast<double>(kv_heads) *
                       static_cast<double>(capacity) * static_cast<double>(head_width) *
                       static_cast<double>(tensor_options.dtype().itemsize());
  require_allocatable(bytes, "a key/value cache of " + std::to_string(capacity) + " positions x " + std::to_string(batch) +
                                 " sequences");
  keys_.reserve(layers);
  values_.reserve(layers);
  for (int64_t i = 0; i < layers; ++i) {
    keys_.push_back(torch::zeros({batch, kv_heads, capacity, head_width}, tensor_options));
    values_.push_back(torch::zeros({batch, kv_heads, capacity, head_width}, tensor_options));
  }
}

KvCache KvCache::gather(const std::vector<Row>& rows, int64_t capacity, int64_t batch, int64_t length) {
  if (rows.empty()) throw Error(ErrorKind::InvalidArgument, "KvCache::gather: no rows");
  int64_t longest = 0;
  for (const auto& r : rows) {
    if (r.cache == nullptr || r.row < 0 || r.row >= r.cache->batch() || r.tokens < 0 || r.tokens > r.cache->length() ||
        r.cache->keys_.size() != rows.front().cache->keys_.size()) {
      throw Error(ErrorKind::InvalidArgument, "KvCache::gather: a row outside its cache");
    }
    longest = std::max(longest, r.tokens);
  }
  const auto count = static_cast<int64_t>(rows.size());
  if (batch == 0) batch = count;
  if (length == 0) length = longest;
  if (batch < count || length < longest) {
    throw Error(ErrorKind::InvalidArgument, "KvCache::gather: a batch of " + std::to_string(batch) + " and a length of " +
                                                std::to_string(length) + " cannot hold " + std::to_string(count) +
                                                " rows of up to " + std::to_string(longest) + " tokens");
  }
  if (length > capacity) {
    throw Error(ErrorKind::InvalidArgument, "KvCache::gather: " + std::to_string(length) +
                                                " tokens exceed the capacity of " + std::to_string(capacity));
  }
  const auto& like = rows.front().cache->keys_.front();
  KvCache out(static_cast<int64_t>(rows.front().cache->keys_.size()), batch, like.size(1), capacity, like.size(3),
              like.options());
  out.length_ = length;
  for (int64_t b = 0; b < count; ++b) out.place(b, rows[static_cast<size_t>(b)]);
  return out;
}

void KvCache::place(int64_t row, const Row& source) {
  const auto* from = source.cache;
  if (row < 0 || row >= batch_ || from == nullptr || source.row < 0 || source.row >= from->batch() || source.tokens < 0 ||
      source.tokens > from->length_ || source.tokens > length_ || from->keys_.size() != keys_.size() ||
      from->keys_.front().size(1) != keys_.front().size(1) || from->keys_.front().size(3) != keys_.front().size(3) ||
      from->keys_.front().dtype() != keys_.front().dtype() || from->keys_.front().device() != keys_.front().device()) {
    throw Error(ErrorKind::InvalidArgument, "KvCache::place: " + std::to_string(source.tokens) + " tokens of row " +
                                                std::to_string(source.row) + " do not fit row " + std::to_string(row) +
                                                " of a cache of " + std::to_string(batch_) + " rows and " +
                                                std::to_string(length_) + " filled slots");
  }
  if (source.tokens == 0) return;
  const int64_t at = length_ - source.tokens;
  const int64_t start = from->length_ - source.tokens;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    keys_[layer][row].narrow(1, at, source.tokens).copy_(from->keys_[layer][source.row].narrow(1, start, source.tokens));
    values_[layer][row].narrow(1, at, source.tokens).copy_(from->values_[layer][source.row].narrow(1, start, source.tokens));
  }
}

std::pair<torch::Tensor, torch::Tensor> KvCache::append(int64_t layer, const torch::Tensor& keys,
                                                        const torch::Tensor& values) {
  const int64_t steps = keys.size(2);
  if (length_ + steps > capacity_) {
    throw Error(ErrorKind::InvalidArgument, "KvCache: " + std::to_string(length_ + steps) +
                                                " positions exceed its capacity of " + std::to_string(capacity_));
  }
  auto& k = keys_.at(layer);
  auto& v = values_.at(layer);
  k.narrow(2, length_, steps).copy_(keys);
  v.narrow(2, length_, steps).copy_(values);
  return {k.narrow(2, 0, length_ + steps), v.narrow(2, 0, length_ + steps)};
}

std::pair<torch::Tensor, torch::Tensor> KvCache::write(int64_t layer, const torch::Tensor& keys,
                                                       const torch::Tensor& values, const torch::Tensor& slot) {
  // No host-side bound check on `slot` here (reading it would synchronise, and a graph replays without
  // us): DecodeStep checks length() < capacity() before every step.
  auto& k = keys_.at(layer);
  auto& v = values_.at(layer);
  k.index_copy_(2, slot, keys);
  v.index_copy_(2, slot, values);
  return {k, v};
}

void KvCache::clear() {
  for (auto& k : keys_) k.zero_();
  for (auto& v : values_) v.zero_();
  length_ = 0;
}

void KvCache::advance(int64_t steps) {
  if (length_ + steps > capacity_) {
    throw Error(ErrorKind::InvalidArgument, "KvCache: " + std::to_string(length_ + steps) +
                                                " positions exceed its capacity of " + std::to_string(capacity_));
  }
  length_ += steps;
}

// ---------------------------------------------------------------------------------------------------------
RMSNormImpl::RMSNormImpl(int64_t width, double eps) : width_(width), eps_(eps) { reset(); }

void RMSNormImpl::reset() { weight = register_parameter("weight", torch::ones({width_})); }

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // float32: libtorch's fused kernel gives the reference's result exactly (checked by the parity tests).
  if (x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32) {
    return at::rms_norm(x, {width_}, weight, eps_);
  }
  // Half precisions: normalise in float32 (the same fused kernel, no scale), round, then scale, in the
  // reference's order: 4 kernels instead of 8, which counts in batch-1 decoding.
  auto normed = at::rms_norm(x.to(torch::kFloat32), {width_}, std::nullopt, eps_);
  return weight * normed.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------
RotaryEmbeddingImpl::RotaryEmbeddingImpl(const LlamaOptions& options) : options_(options) { reset(); }

void RotaryEmbeddingImpl::reset() {
  const int64_t dim = options_.head_width();
  auto exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<double>(dim);
  inv_freq_ = 1.0 / torch::pow(options_.rope_theta(), exponents);
  inv_freq_ = inv_freq_ / options_.rope_scaling_factor();
  cos_ = sin_ = torch::Tensor();
  built_ = 0;
}

void RotaryEmbeddingImpl::build(int64_t positions, torch::Device device) {
  // Grown by doubling, never past the context: a 10-million-position context costs nothing until used.
  const int64_t n = std::min(options_.max_position(), std::max({positions, 2 * built_, int64_t{256}}));
  const int64_t dim = options_.head_width();
  auto freqs = torch::outer(torch::arange(n, torch::kInt64).to(torch::kFloat32), inv_freq_);
  auto angles = torch::cat({freqs, freqs}, -1);
  cos_ = angles.cos();
  sin_ = angles.sin();
  sin_.narrow(1, 0, dim / 2).neg_();
  cos_ = cos_.to(device);
  sin_ = sin_.to(device);
  built_ = n;
}

std::pair<torch::Tensor, torch::Tensor> RotaryEmbeddingImpl::tables(const torch::Tensor& positions,
                                                                    torch::ScalarType dtype, int64_t limit) {
  if (limit > built_) build(limit, positions.device());
  if (cos_.device() != positions.device()) {
    cos_ = cos_.to(positions.device());
    sin_ = sin_.to(positions.device());
  }
  // [B, T] -> [B, 1, T, D], cast to the activations' dtype as the reference does.
  const auto flat = positions.reshape(-1);
  auto cos = cos_.index_select(0, flat).view({positions.size(0), 1, positions.size(1), -1}).to(dtype);
  auto sin = sin_.index_select(0, flat).view({positions.size(0), 1, positions.size(1), -1}).to(dtype);
  return {cos, sin};
}

torch::Tensor RotaryEmbeddingImpl::rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos + swap_halves(x) * sin;
}

// ---------------------------------------------------------------------------------------------------------
LlamaAttentionImpl::LlamaAttentionImpl(const LlamaOptions& options) : options_(options) { reset(); }

void LlamaAttentionImpl::reset() {
  const int64_t h = options_.hidden_size();
  const int64_t d = options_.head_width();
  const bool bias = options_.attention_bias();
  if (options_.quantized()) {
    const auto f = options_.quant_format();
    qkv_proj = register_module("qkv_proj", QuantLinear(h, (options_.num_heads() + 2 * options_.kv_heads()) * d, bias, f));
    o_proj_quant = register_module("o_proj", QuantLinear(options_.num_heads() * d, h, bias, f));
    return;
  }
  q_proj = register_module("q_proj", make_linear(h, options_.num_heads() * d, bias));
  k_proj = register_module("k_proj", make_linear(h, options_.kv_heads() * d, bias));
  v_proj = register_module("v_proj", make_linear(h, options_.kv_heads() * d, bias));
  o_proj = register_module("o_proj", make_linear(options_.num_heads() * d, h, bias));
}

namespace {

// Re-points each parameter into one new tensor stacked along dim 0 (a view each), returning that tensor.
torch::Tensor stack_into_one(const std::vector<torch::Tensor*>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (auto* p : params) parts.push_back(*p);
  auto fused = torch::cat(parts, 0);
  int64_t row = 0;
  for (auto* p : params) {
    const int64_t rows = p->size(0);
    p->set_data(fused.narrow(0, row, rows));
    row += rows;
  }
  return fused;
}

bool views_of(const torch::Tensor& whole, const std::vector<const torch::Tensor*>& parts) {
  if (!whole.defined()) return false;
  for (const auto* p : parts) {
    if (!p->defined() || !p->is_alias_of(whole)) return false;
  }
  return true;
}

}  // namespace

void LlamaAttentionImpl::fuse_projections() {
  if (options_.quantized() || fused()) return;
  qkv_weight_ = stack_into_one({&q_proj->weight, &k_proj->weight, &v_proj->weight});
  qkv_bias_ = options_.attention_bias() ? stack_into_one({&q_proj->bias, &k_proj->bias, &v_proj->bias}) : torch::Tensor();
}

bool LlamaAttentionImpl::fused() const {
  if (options_.quantized()) return false;
  return views_of(qkv_weight_, {&q_proj->weight, &k_proj->weight, &v_proj->weight}) &&
         (!options_.attention_bias() || views_of(qkv_bias_, {&q_proj->bias, &k_proj->bias, &v_proj->bias}));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, int64_t layer, const AttentionContext& ctx,
                                          const LayerInputs& in) {
  const int64_t batch = x.size(0);
  const int64_t steps = x.size(1);
  const int64_t d = options_.head_width();
  const int64_t heads = options_.num_heads();
  const int64_t kv = options_.kv_heads();
  torch::Tensor q, k, v;
  const bool one_fused_token = steps == 1 && !torch::GradMode::is_enabled() && fused();
  if (one_fused_token || options_.quantized()) {
    // q, k and v from one product, [B, T, heads + 2 kv, D].
    auto qkv = (options_.quantized() ? qkv_proj->forward(x) : decode_linear(x, qkv_weight_, qkv_bias_))
                   .view({batch, steps, heads + 2 * kv, d});
    if (steps == 1) {
      // One token: the tables [B, 1, 1, D] broadcast over the heads, so q and k rotate in one pass.
      // Transposing a length-1 axis moves no data.
      auto qk = RotaryEmbeddingImpl::rotate(qkv.narrow(2, 0, heads + kv), in.cos, in.sin);
      q = qk.narrow(2, 0, heads).transpose(1, 2);
      k = qk.narrow(2, heads, kv).transpose(1, 2);
    } else {
      q = RotaryEmbeddingImpl::rotate(qkv.narrow(2, 0, heads).transpose(1, 2), in.cos, in.sin);
      k = RotaryEmbeddingImpl::rotate(qkv.narrow(2, heads, kv).transpose(1, 2), in.cos, in.sin);
    }
    v = qkv.narrow(2, heads + kv, kv).transpose(1, 2);
  } else {
    q = project(q_proj, x).view({batch, steps, heads, d}).transpose(1, 2);
    k = project(k_proj, x).view({batch, steps, kv, d}).transpose(1, 2);
    v = project(v_proj, x).view({batch, steps, kv, d}).transpose(1, 2);
    q = RotaryEmbeddingImpl::rotate(q, in.cos, in.sin);
    k = RotaryEmbeddingImpl::rotate(k, in.cos, in.sin);
  }
  if (ctx.cache != nullptr) {
    std::tie(k, v) = ctx.slot.defined() ? ctx.cache->write(layer, k, v, ctx.slot) : ctx.cache->append(layer, k, v);
  }
  const bool gqa = options_.kv_heads() != options_.num_heads();
  // In training (is_training(): forward and recomputation alike) half precision on a CPU runs in float32.
  auto out = nn::attention(q, k, v, in.mask.defined() ? std::optional<at::Tensor>(in.mask) : std::nullopt, in.causal,
                           gqa, is_training());
  out = out.transpose(1, 2).reshape({batch, steps, options_.num_heads() * d});
  if (options_.quantized()) return o_proj_quant->forward(out);
  return project(o_proj, out);
}

// ---------------------------------------------------------------------------------------------------------
LlamaMLPImpl::LlamaMLPImpl(const LlamaOptions& options) : options_(options) { reset(); }

void LlamaMLPImpl::reset() {
  const int64_t h = options_.hidden_size();
  const int64_t m = options_.intermediate_size();
  if (options_.quantized()) {
    gate_up_proj = register_module("gate_up_proj", QuantLinear(h, 2 * m, false, options_.quant_format()));
    down_proj_quant = register_module("down_proj", QuantLinear(m, h, false, options_.quant_format()));
    return;
  }
  gate_proj = register_module("gate_proj", make_linear(h, m, false));
  up_proj = register_module("up_proj", make_linear(h, m, false));
  down_proj = register_module("down_proj", make_linear(m, h, false));
}

void LlamaMLPImpl::fuse_projections() {
  if (!options_.quantized() && !fused()) gate_up_weight_ = stack_into_one({&gate_proj->weight, &up_proj->weight});
}

bool LlamaMLPImpl::fused() const {
  return !options_.quantized() && views_of(gate_up_weight_, {&gate_proj->weight, &up_proj->weight});
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  const int64_t m = options_.intermediate_size();
  if (options_.quantized()) {
    auto gate_up = gate_up_proj->forward(x);
    return down_proj_quant->forward(torch::silu(gate_up.narrow(-1, 0, m)) * gate_up.narrow(-1, m, m));
  }
  if (!torch::GradMode::is_enabled() && fused()) {
    auto gate_up = decode_linear(x, gate_up_weight_, torch::Tensor());
    return decode_linear(torch::silu(gate_up.narrow(-1, 0, m)) * gate_up.narrow(-1, m, m), down_proj->weight,
                         torch::Tensor());
  }
  return project(down_proj, torch::silu(project(gate_proj, x)) * project(up_proj, x));
}

// ---------------------------------------------------------------------------------------------------------
LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaOptions& options) : options_(options) { reset(); }

void LlamaDecoderLayerImpl::reset() {
  self_attn = register_module("self_attn", LlamaAttention(options_));
  mlp = register_module("mlp", LlamaMLP(options_));
  input_layernorm = register_module("input_layernorm",
                                    RMSNorm(options_.hidden_size(), options_.rms_norm_eps()));
  post_attention_layernorm = register_module("post_attention_layernorm",
                                             RMSNorm(options_.hidden_size(), options_.rms_norm_eps()));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, int64_t layer,
                                             const AttentionContext& ctx, const LayerInputs& in) {
  auto h = x + self_attn->forward(input_layernorm(x), layer, ctx, in);
  return h + mlp(post_attention_layernorm(h));
}

// ---------------------------------------------------------------------------------------------------------
LlamaModelImpl::LlamaModelImpl(const LlamaOptions& options) : options_(options) {
  options_.validate();
  reset();
}

void LlamaModelImpl::reset() {
  embed_tokens = register_module(
      "embed_tokens", nn::Embedding(nn::EmbeddingOptions(options_.vocab_size(), options_.hidden_size())));
  // The layers live only in the list: clone() refills it with copies, which a second container of
  // pointers would not see.
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options_.num_layers(); ++i) {
    layers->push_back(LlamaDecoderLayer(options_));
  }
  norm = register_module("norm", RMSNorm(options_.hidden_size(), options_.rms_norm_eps()));
  // Not registered: it holds no parameters, only tables derived from the options.
  rotary_emb = RotaryEmbedding(options_);
}

torch::Tensor LlamaModelImpl::embed(const torch::Tensor& ids) { return embed_tokens(ids); }

void LlamaModelImpl::fuse_projections() {
  for (size_t i = 0; i < layers->size(); ++i) {
    auto& layer = layers->at<LlamaDecoderLayerImpl>(i);
    layer.self_attn->fuse_projections();
    layer.mlp->fuse_projections();
  }
}

LayerInputs LlamaModelImpl::prepare(const AttentionContext& ctx, int64_t new_tokens, torch::ScalarType dtype) {
  LayerInputs in;
  if (ctx.slot.defined()) {
    // Static decoding: one token, every slot of the cache; key j is visible when j <= slot and real.
    if (ctx.cache == nullptr || new_tokens != 1) {
      throw Error(ErrorKind::InvalidArgument, "llama: static decoding takes one token and a cache");
    }
    const int64_t capacity = ctx.cache->capacity();
    std::tie(in.cos, in.sin) = rotary_emb->tables(ctx.positions, dtype, capacity);
    auto key_slots = torch::arange(capacity, torch::TensorOptions().dtype(torch::kInt64).device(ctx.slot.device()));
    auto mask = (key_slots <= ctx.slot).view({1, 1, 1, capacity});
    if (ctx.key_valid.defined()) mask = mask & ctx.key_valid.to(torch::kBool).view({-1, 1, 1, capacity});
    // Additive, made once here: SDPA would otherwise turn the boolean mask into this in every layer.
    in.mask = torch::zeros(mask.sizes(), torch::TensorOptions().dtype(dtype).device(mask.device()))
                  .masked_fill_(mask.logical_not(), -std::numeric_limits<double>::infinity());
    return in;
  }
  const int64_t past = ctx.cache != nullptr ? ctx.cache->length() : 0;
  const int64_t total = past + new_tokens;
  // Positions count the valid tokens before each one, so all lie below past + new_tokens.
  std::tie(in.cos, in.sin) = rotary_emb->tables(ctx.positions, dtype, total);
  if (!ctx.key_valid.defined()) {
    // No padding: a single new token sees every key; a fresh block is plainly causal.
    if (new_tokens == 1) return in;
    if (past == 0) {
      in.causal = true;
      return in;
    }
  }
  auto device = ctx.positions.device();
  // Query i (slot past+i) may see key j when j <= past+i.
  auto query_slots = torch::arange(past, total, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto key_slots = torch::arange(total, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto causal = key_slots.unsqueeze(0) <= query_slots.unsqueeze(1);  // [T, S]
  auto mask = causal.unsqueeze(0).unsqueeze(0);                      // [1, 1, T, S]
  if (ctx.key_valid.defined()) {
    auto valid = ctx.key_valid.narrow(1, 0, total).to(torch::kBool).view({-1, 1, 1, total});
    // A padding query still sees itself, so its (unused) output stays finite instead of NaN.
    auto self = key_slots.unsqueeze(0) == query_slots.unsqueeze(1);
    mask = (mask & valid) | self.unsqueeze(0).unsqueeze(0);
  }
  in.mask = mask;
  return in;
}

torch::Tensor LlamaModelImpl::forward_layer(int64_t layer, const torch::Tensor& hidden,
                                            const AttentionContext& ctx, const LayerInputs& in) {
  if (layer < 0 || layer >= static_cast<int64_t>(layers->size())) {
    throw Error(ErrorKind::InvalidArgument, "llama: layer " + std::to_string(layer) + " of " +
                                                std::to_string(layers->size()) + " does not exist");
  }
  auto& decoder_layer = layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(layer));
  return decoder_layer.forward(hidden, layer, ctx, in);
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& input_embeds, const AttentionContext& ctx) {
  const int64_t steps = input_embeds.size(1);
  const int64_t past = ctx.cache != nullptr ? ctx.cache->length() : 0;
  if (past + steps > options_.max_position()) {
    throw Error(ErrorKind::InvalidArgument,
                "sequence of " + std::to_string(past + steps) + " tokens exceeds the model context of " +
                    std::to_string(options_.max_position()));
  }
  if (steps == 1 && !ctx.slot.defined() && input_embeds.is_cpu()) {
    if (auto out = forward_cpu_decode(input_embeds, ctx); out.defined()) return out;
  }
  const auto in = prepare(ctx, steps, input_embeds.scalar_type());
  if (ctx.slot.defined()) {
    if (auto out = forward_fused_decode(input_embeds, ctx, in); out.defined()) return out;
  }
  auto hidden = input_embeds;
  for (int64_t i = 0; i < options_.num_layers(); ++i) hidden = forward_layer(i, hidden, ctx, in);
  if (ctx.cache != nullptr && !ctx.slot.defined()) ctx.cache->advance(steps);
  return norm(hidden);
}

#ifdef LEGO_WITH_CUDA
namespace {

// x [1, 1, k] -> [1, 1, n]: the bandwidth-bound matrix-vector kernel for one bf16 row, else cuBLAS.
torch::Tensor cuda_decode_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, void* stream) {
  if (x.scalar_type() == torch::kBFloat16 && x.size(0) == 1 && weight.is_contiguous() && x.is_contiguous() &&
      (!bias.defined() || bias.is_contiguous())) {
    auto y = torch::empty({1, 1, weight.size(0)}, x.options());
    if (cuda::gemv_bf16(weight.data_ptr(), x.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr, y.data_ptr(),
                        weight.size(0), weight.size(1), stream)) {
      return y;
    }
  }
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace
#endif

torch::Tensor LlamaModelImpl::forward_fused_decode(const torch::Tensor& input_embeds, const AttentionContext& ctx,
                                                   const LayerInputs& in) {
#ifdef LEGO_WITH_CUDA
  const auto dtype = input_embeds.scalar_type();
  if (!input_embeds.is_cuda() || torch::GradMode::is_enabled() || input_embeds.size(1) != 1 ||
      (dtype != torch::kFloat32 && dtype != torch::kBFloat16) || !in.mask.defined()) {
    return {};
  }
  for (size_t i = 0; i < layers->size(); ++i) {
    auto& layer = layers->at<LlamaDecoderLayerImpl>(i);
    if (!layer.self_attn->fused() || !layer.mlp->fused() || layer.self_attn->qkv_weight().scalar_type() != dtype ||
        layer.input_layernorm->weight.scalar_type() != dtype ||
        layer.post_attention_layernorm->weight.scalar_type() != dtype ||
        ctx.cache->layer_keys(static_cast<int64_t>(i)).scalar_type() != dtype) {
      return {};
    }
  }
  if (norm->weight.scalar_type() != dtype) return {};
  const int kind = dtype == torch::kBFloat16 ? 1 : 0;
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  const int64_t batch = input_embeds.size(0);
  const int64_t width = options_.hidden_size();
  const int64_t heads = options_.num_heads();
  const int64_t kv = options_.kv_heads();
  const int64_t d = options_.head_width();
  const int64_t m = options_.intermediate_size();
  const auto eps = static_cast<float>(options_.rms_norm_eps());
  const auto cos = in.cos.contiguous();
  const auto sin = in.sin.contiguous();
  auto residual = input_embeds.contiguous();
  auto normed = torch::empty_like(residual);
  cuda::add_rms_norm(kind, residual.data_ptr(), nullptr, nullptr,
                     layers->at<LlamaDecoderLayerImpl>(0).input_layernorm->weight.data_ptr(), normed.data_ptr(), batch,
                     width, eps, stream);
  for (int64_t i = 0; i < options_.num_layers(); ++i) {
    auto& layer = layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(i));
    auto& attn = *layer.self_attn;
    auto qkv = cuda_decode_linear(normed, attn.qkv_weight(), attn.qkv_bias(), stream).contiguous();
    const auto& keys = ctx.cache->layer_keys(i);
    const auto& values = ctx.cache->layer_values(i);
    cuda::rope_into_cache(kind, qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(),
                          ctx.slot.data_ptr<int64_t>(), batch, heads, kv, d, ctx.cache->capacity(), stream);
    auto q = qkv.view({batch, 1, heads + 2 * kv, d}).narrow(2, 0, heads).transpose(1, 2);
    auto out = at::scaled_dot_product_attention(q, keys, values, in.mask, 0.0, false, std::nullopt, kv != heads);
    auto o = cuda_decode_linear(out.transpose(1, 2).reshape({batch, 1, heads * d}).contiguous(), attn.o_proj->weight,
                           attn.o_proj->bias, stream);
    auto mid = torch::empty_like(residual);
    cuda::add_rms_norm(kind, residual.data_ptr(), o.contiguous().data_ptr(), mid.data_ptr(),
                       layer.post_attention_layernorm->weight.data_ptr(), normed.data_ptr(), batch, width, eps, stream);
    auto gate_up = cuda_decode_linear(normed, layer.mlp->gate_up_weight(), torch::Tensor(), stream).contiguous();
    auto activated = torch::empty({batch, 1, m}, gate_up.options());
    cuda::silu_mul(kind, gate_up.data_ptr(), activated.data_ptr(), batch, m, stream);
    auto down = cuda_decode_linear(activated, layer.mlp->down_proj->weight, torch::Tensor(), stream).contiguous();
    const auto& next_norm = i + 1 < options_.num_layers()
                                ? layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(i + 1)).input_layernorm->weight
                                : norm->weight;
    residual = torch::empty_like(mid);
    cuda::add_rms_norm(kind, mid.data_ptr(), down.data_ptr(), residual.data_ptr(), next_norm.data_ptr(), normed.data_ptr(),
                       batch, width, eps, stream);
  }
  return normed;  // the final norm of the last residual
#else
  (void)input_embeds;
  (void)ctx;
  (void)in;
  return {};
#endif
}

namespace {

// One decoder layer whose activations are recomputed in the backward pass instead of kept. The model,
// context and layer inputs travel as addresses: autograd's saved data holds only IValues. The layer's
// trained parameters are inputs of the function, and their gradients its outputs, so that the autograd
// graph shows which parameters a loss reaches (data parallel training starts a gradient bucket as soon as
// every parameter it holds is done or unreachable) and each gradient arrives through the parameter's own
// accumulator, as without checkpointing.
std::vector<torch::Tensor> trained_parameters(LlamaModelImpl& model, int64_t layer) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model.layers->ptr(static_cast<size_t>(layer))->parameters()) {
    if (p.requires_grad()) out.push_back(p);
  }
  return out;
}

struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               torch::TensorList /*params: reached through the model*/, int64_t layer, int64_t model,
                               int64_t attention, int64_t inputs) {
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["model"] = model;
    ctx->saved_data["attention"] = attention;
    ctx->saved_data["inputs"] = inputs;
    // The recomputation must see the forward's autocast (bf16 on CUDA), which is usually off by the time
    // backward runs.
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
    ctx->save_for_backward({hidden});
    torch::NoGradGuard no_grad;
    return reinterpret_cast<LlamaModelImpl*>(model)->forward_layer(
        layer, hidden, *reinterpret_cast<const AttentionContext*>(attention),
        *reinterpret_cast<const LayerInputs*>(inputs));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                  torch::autograd::variable_list grads) {
    auto* model = reinterpret_cast<LlamaModelImpl*>(ctx->saved_data["model"].toInt());
    const auto layer = ctx->saved_data["layer"].toInt();
    auto hidden = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::autograd::variable_list wrt{hidden};
    for (auto& p : trained_parameters(*model, layer)) wrt.push_back(p);
    torch::autograd::variable_list out;
    {
      torch::AutoGradMode enable(true);
      const bool was_autocast = at::autocast::is_autocast_enabled(at::kCUDA);
      const bool autocast = ctx->saved_data["autocast"].toBool();
      at::autocast::set_autocast_enabled(at::kCUDA, autocast);
      struct Restore {
        bool on;
        ~Restore() { at::autocast::set_autocast_enabled(at::kCUDA, on); }
      } restore{was_autocast};
      auto result = model->forward_layer(layer, hidden,
                                         *reinterpret_cast<const AttentionContext*>(ctx->saved_data["attention"].toInt()),
                                         *reinterpret_cast<const LayerInputs*>(ctx->saved_data["inputs"].toInt()));
      out = torch::autograd::grad({result}, wrt, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
    }
    // hidden, each parameter, then nothing for the four addresses.
    out.insert(out.end(), 4, torch::Tensor());
    return out;
  }
};

}  // namespace

torch::Tensor LlamaModelImpl::forward_checkpointed(const torch::Tensor& input_embeds, const AttentionContext& ctx,
                                                   const LayerInputs& in) {
  if (ctx.cache != nullptr) throw Error(ErrorKind::InvalidArgument, "llama: checkpointed forward takes no cache");
  auto hidden = input_embeds;
  // The function needs an input that requires grad, or autograd would not record it at all.
  if (!hidden.requires_grad()) hidden = hidden.detach().requires_grad_(true);
  for (int64_t layer = 0; layer < options_.num_layers(); ++layer) {
    // A TensorList, not a vector: autograd counts only tensors and tensor lists as the function's inputs.
    const auto params = trained_parameters(*this, layer);
    hidden = CheckpointedLayer::apply(hidden, torch::TensorList(params), layer, reinterpret_cast<int64_t>(this),
                                      reinterpret_cast<int64_t>(&ctx), reinterpret_cast<int64_t>(&in));
  }
  return norm(hidden);
}

// ---------------------------------------------------------------------------------------------------------
LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlamaOptions& options) : options_(options) { reset(); }

void LlamaForCausalLMImpl::reset() {
  model = register_module("model", LlamaModel(options_));
  if (!options_.tie_word_embeddings() && options_.quantized()) {
    auto head = options_.quant_format();
    head.format = WeightFormat::Int8;  // the head is int8 in every format (llama.cpp keeps it >= 6 bits too)
    lm_head_quant = register_module("lm_head", QuantLinear(options_.hidden_size(), options_.vocab_size(), false, head));
  } else if (!options_.tie_word_embeddings()) {
    lm_head = register_module("lm_head", make_linear(options_.hidden_size(), options_.vocab_size(), false));
  }
}

torch::Tensor LlamaForCausalLMImpl::logits(const torch::Tensor& hidden) {
#ifdef LEGO_WITH_CUDA
  // One token of one sequence (decoding): the head is the largest matrix read per step.
  if (lm_head && hidden.is_cuda() && !torch::GradMode::is_enabled() && hidden.dim() == 3 && hidden.size(0) == 1 &&
      hidden.size(1) == 1) {
    return cuda_decode_linear(hidden.contiguous(), lm_head->weight, lm_head->bias, at::cuda::getCurrentCUDAStream().stream());
  }
#endif
  if (lm_head_quant) return lm_head_quant->forward(hidden);
  if (lm_head) return project(lm_head, hidden);
  return decode_linear(hidden, model->embed_tokens->weight, torch::Tensor());
}

torch::Tensor LlamaForCausalLMImpl::forward(const torch::Tensor& input_embeds, const AttentionContext& ctx) {
  return logits(model->forward(input_embeds, ctx));
}

}  // namespace lego::llm
