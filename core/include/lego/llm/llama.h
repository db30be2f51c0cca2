// LLaMA decoder on libtorch: the language model every LEGO modality is spliced into (DESIGN.md, core/llm).
//
// Module names follow the Hugging Face LlamaForCausalLM state dict (`model.layers.0.self_attn.q_proj.weight`,
// `lm_head.weight`, ...) so released checkpoints load by name. The same modules serve inference (KV cache,
// batched left-padded prompts) and training (full-sequence forward under autograd from input embeddings;
// `LlamaModelImpl::forward_layer` is the per-layer seam for activation checkpointing).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <vector>

#include "lego/llm/quant.h"
#include "lego/sdk/nn/linear.h"

namespace lego::llm {

// Architecture of a LLaMA-family decoder; the defaults are LLaMA-2 / Vicuna-7B v1.5's where they apply.
struct LlamaOptions {
  LlamaOptions(int64_t vocab_size, int64_t hidden_size, int64_t intermediate_size, int64_t num_layers,
               int64_t num_heads);

  int64_t kv_heads() const { return num_kv_heads_ > 0 ? num_kv_heads_ : num_heads_; }
  int64_t head_width() const { return head_dim_ > 0 ? head_dim_ : hidden_size_ / num_heads_; }
  bool quantized() const { return weight_format_ != WeightFormat::Dense; }
  QuantFormat quant_format() const { return QuantFormat{weight_format_, weight_group_}; }
  // Throws lego::Error(InvalidArgument) naming the first inconsistent field, or saying that the model
  // would not fit in this machine's memory even in half precision.
  void validate() const;
  // Parameters of the model these options describe (a double: absurd sizes must not overflow).
  double parameter_count() const;

  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, intermediate_size);
  TORCH_ARG(int64_t, num_layers);
  TORCH_ARG(int64_t, num_heads);
  // Key/value heads for grouped-query attention; 0 means num_heads (plain multi-head attention).
  TORCH_ARG(int64_t, num_kv_heads) = 0;
  // Per-head width; 0 means hidden_size / num_heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  TORCH_ARG(double, rms_norm_eps) = 1e-5;
  TORCH_ARG(double, rope_theta) = 10000.0;
  // Linear RoPE scaling ("position interpolation"): positions are divided by this factor.
  TORCH_ARG(double, rope_scaling_factor) = 1.0;
  // Longest sequence (prompt + generated) the model accepts.
  TORCH_ARG(int64_t, max_position) = 4096;
  TORCH_ARG(bool, attention_bias) = false;
  TORCH_ARG(bool, tie_word_embeddings) = false;
  // Int8/Int4: the decoder's projections and the LM head hold quantised weights (lego/llm/quant.h) for
  // inference on the CPU: q/k/v as one `qkv_proj`, gate/up as one `gate_up_proj`, and the LM head in
  // int8 whatever the format. Embeddings and norms stay dense.
  TORCH_ARG(WeightFormat, weight_format) = WeightFormat::Dense;
  TORCH_ARG(int64_t, weight_group) = 32;

};

// Keys and values of every layer for a batch of sequences, allocated once at full capacity and filled in
// place: decoding writes one slot per step, never concatenates.
class KvCache {
 public:
  KvCache(const LlamaOptions& options, int64_t batch, int64_t capacity, torch::TensorOptions tensor_options);

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  // Slots filled so far (the same for every row: prompts are left-padded to one length).
  int64_t length() const { return length_; }
  // Writes `keys`/`values` [B, kv_heads, T, D] of `layer` at slots length()..length()+T-1 and returns
  // views of slots 0..length()+T-1.
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& keys,
                                                 const torch::Tensor& values);
  // Static-shape form for one new token (CUDA graphs): writes [B, kv_heads, 1, D] at the slot held in
  // `slot` ([1] int64 on the cache's device) and returns the whole cache of `layer`, every slot. Slots not
  // yet written hold zeros (the cache starts zeroed), so masked attention over them stays finite.
  std::pair<torch::Tensor, torch::Tensor> write(int64_t layer, const torch::Tensor& keys, const torch::Tensor& values,
                                                const torch::Tensor& slot);
  // Marks T more slots as filled; called once per forward after every layer appended.
  void advance(int64_t steps);
  void reset() { length_ = 0; }
  // reset(), and every slot zeroed again as in a new cache, in place: the buffers keep their addresses, so
  // that a captured decoding graph that reads them stays valid for the next sequence.
  void clear();
  // The whole [B, kv_heads, capacity, D] buffers of one layer (the fused CUDA decoding step writes them).
  const torch::Tensor& layer_keys(int64_t layer) const { return keys_.at(layer); }
  const torch::Tensor& layer_values(int64_t layer) const { return values_.at(layer); }

  // One row of a cache whose real tokens are its last `tokens` filled slots (left padding puts them there).
  struct Row {
    const KvCache* cache = nullptr;
    int64_t row = 0;
    int64_t tokens = 0;
  };
  // A new cache of `rows` (from caches of one model, dtype and device), each row's tokens copied into
  // the last slots of a common length, the longest row's tokens; the slots in front of a shorter row are
  // padding that the caller's key_valid masks. Continuous batching joins and drops sequences with it.
  // `batch` (>= rows; 0: as many as rows) leaves free rows after them, zeroed, for place(); `length` (>=
  // the longest row; 0: the longest row) sets the common length, so that a later, longer row still fits.
  // Throws lego::Error(InvalidArgument) for no rows, a row out of range, a batch or length below the rows,
  // or a length past `capacity`.
  static KvCache gather(const std::vector<Row>& rows, int64_t capacity, int64_t batch = 0, int64_t length = 0);
  // Copies `source`'s tokens into the last `source.tokens` filled slots of row `row` of this cache (a
  // sequence joining a free row); its slots in front stay as they were, for the caller's key_valid to mask.
  // Throws lego::Error(InvalidArgument) for a row out of range, more tokens than length(), or a source of
  // another shape, dtype or device.
  void place(int64_t row, const Row& source);

 private:
  KvCache(int64_t layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_width,
          torch::TensorOptions tensor_options);

  int64_t batch_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<torch::Tensor> keys_;
  std::vector<torch::Tensor> values_;
};

// What one forward call attends to. Built by the caller (generation, training) once per call.
struct AttentionContext {
  // [B, T] int64: rotary position of each new token (left padding makes these differ per row).
  torch::Tensor positions;
  // [B, S] bool over every key slot the call sees (cached + new), true where the key is a real token;
  // undefined means all keys are real.
  torch::Tensor key_valid;
  // When set, new keys and values are appended to it and all cached slots are attended.
  KvCache* cache = nullptr;
  // Static decoding (see DecodeStep): [1] int64 on the device, the cache slot of the one new token. Every
  // shape then depends on the cache's capacity alone: keys are written at `slot`, all capacity() slots are
  // attended with those after `slot` masked, and forward() leaves cache->length() to the caller.
  torch::Tensor slot;
};

// What every layer of one forward call shares, prepared once per call by LlamaModelImpl::prepare.
struct LayerInputs {
  torch::Tensor mask;  // [B, 1, T, S] bool (true = attend), or undefined
  bool causal = false; // with an undefined mask: apply the plain causal pattern
  torch::Tensor cos;   // [B, 1, T, D] rotary tables at ctx.positions, in the activations' dtype
  torch::Tensor sin;   // [B, 1, T, D], sign folded in for the rotate-half layout
};

// y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 as the reference does.
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  RMSNormImpl(int64_t width, double eps);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;

 private:
  int64_t width_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary position embedding: cos/sin tables for the positions used so far (grown by doubling, at most
// max_position), so a long context costs memory only once it is used.
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  explicit RotaryEmbeddingImpl(const LlamaOptions& options);
  void reset() override;
  // cos and signed sin [B, 1, T, D] for `positions` [B, T], each below `limit` (<= max_position), cast to
  // `dtype`.
  std::pair<torch::Tensor, torch::Tensor> tables(const torch::Tensor& positions, torch::ScalarType dtype,
                                                 int64_t limit);
  // Rotates x [B, heads, T, D] by the angles whose tables() are given.
  static torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

 private:
  void build(int64_t positions, torch::Device device);

 public:
  int64_t built() const { return built_; }  // positions the tables hold now

 private:

  LlamaOptions options_;
  torch::Tensor inv_freq_;  // [D/2] float32; derived from the options, never in a checkpoint
  torch::Tensor cos_;       // [built_, D] float32
  torch::Tensor sin_;       // [built_, D] float32, first half negated (see rotate)
  int64_t built_ = 0;
};
TORCH_MODULE(RotaryEmbedding);

class LlamaAttentionImpl : public torch::nn::Cloneable<LlamaAttentionImpl> {
 public:
  explicit LlamaAttentionImpl(const LlamaOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x, int64_t layer, const AttentionContext& ctx, const LayerInputs& in);

  // For decoding: re-points the q/k/v weights into one [q + 2 kv, hidden] tensor (views, no extra memory)
  // so that a one-token step outside autograd runs one matrix product and one rotary pass instead of three
  // and two. Idempotent; moving the module afterwards simply turns it off again.
  void fuse_projections();
  bool fused() const;
  const torch::Tensor& qkv_weight() const { return qkv_weight_; }
  const torch::Tensor& qkv_bias() const { return qkv_bias_; }

  // Dense models: q/k/v/o. Quantised models (options.quantized()): qkv_proj and o_proj_quant (named
  // "o_proj" in the state dict), the dense ones null.
  nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  QuantLinear qkv_proj{nullptr}, o_proj_quant{nullptr};

 private:
  LlamaOptions options_;
  torch::Tensor qkv_weight_, qkv_bias_;
};
TORCH_MODULE(LlamaAttention);

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
class LlamaMLPImpl : public torch::nn::Cloneable<LlamaMLPImpl> {
 public:
  explicit LlamaMLPImpl(const LlamaOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  // As LlamaAttention's: gate and up in one [2 m, hidden] tensor, used outside autograd.
  void fuse_projections();
  bool fused() const;
  const torch::Tensor& gate_up_weight() const { return gate_up_weight_; }

  nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  // Quantised models: gate_up_proj and down_proj_quant (named "down_proj"), the dense ones null.
  QuantLinear gate_up_proj{nullptr}, down_proj_quant{nullptr};

 private:
  LlamaOptions options_;
  torch::Tensor gate_up_weight_;
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Cloneable<LlamaDecoderLayerImpl> {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x, int64_t layer, const AttentionContext& ctx, const LayerInputs& in);

  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};

 private:
  LlamaOptions options_;
};
TORCH_MODULE(LlamaDecoderLayer);

// The decoder stack without the LM head (HF `LlamaModel`).
class LlamaModelImpl : public torch::nn::Cloneable<LlamaModelImpl> {
 public:
  explicit LlamaModelImpl(const LlamaOptions& options);
  void reset() override;

  // [B, T] ids -> [B, T, hidden] input embeddings (where modality features are spliced in).
  torch::Tensor embed(const torch::Tensor& ids);
  // Runs every layer and the final norm on input embeddings [B, T, hidden]; returns [B, T, hidden].
  torch::Tensor forward(const torch::Tensor& input_embeds, const AttentionContext& ctx);
  // What `forward` shares among the layers for T new tokens of `dtype`: mask and rotary tables.
  LayerInputs prepare(const AttentionContext& ctx, int64_t new_tokens, torch::ScalarType dtype);
  // One decoder layer on its own: the seam for activation checkpointing in training.
  torch::Tensor forward_layer(int64_t layer, const torch::Tensor& hidden, const AttentionContext& ctx,
                              const LayerInputs& in);
  // forward() with activation checkpointing: each layer's activations are recomputed in the backward
  // pass instead of kept (torch.utils.checkpoint's reentrant form). `ctx` and `in` (from prepare) must
  // outlive the backward pass.
  torch::Tensor forward_checkpointed(const torch::Tensor& input_embeds, const AttentionContext& ctx,
                                     const LayerInputs& in);

  // forward() of one new token per row on the CPU (no slot, a cache; what DecodeStep's dynamic mode runs)
  // over raw buffers: the decoding kernels of quant.h for the products, plain loops for the rest, which
  // round to the activations' dtype where the operator form does. forward() takes it when it can; it
  // returns an undefined tensor (and changes nothing) for a call or model it does not take: dense weights
  // other than bf16, a quantised matrix with a padded last group, norms, cache or embeddings of different
  // dtypes, a gradient, or LEGO_CPU_DECODE=operators in the environment.
  torch::Tensor forward_cpu_decode(const torch::Tensor& input_embeds, const AttentionContext& ctx);

  const LlamaOptions& options() const { return options_; }
  // Every layer's fuse_projections (DecodeStep calls it once the model sits on its device).
  void fuse_projections();

  nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};  // of LlamaDecoderLayer
  RMSNorm norm{nullptr};
  RotaryEmbedding rotary_emb{nullptr};

 private:
  // The static one-token step on CUDA with fused kernels (norms with the residual adds, rotary with the
  // cache writes, SiLU with the product): undefined when this build, device or model cannot take it.
  torch::Tensor forward_fused_decode(const torch::Tensor& input_embeds, const AttentionContext& ctx,
                                     const LayerInputs& in);
  LlamaOptions options_;
};
TORCH_MODULE(LlamaModel);

// Decoder plus LM head (HF `LlamaForCausalLM`).
class LlamaForCausalLMImpl : public torch::nn::Cloneable<LlamaForCausalLMImpl> {
 public:
  explicit LlamaForCausalLMImpl(const LlamaOptions& options);
  void reset() override;

  // Hidden states [B, T, hidden] -> logits [B, T, vocab].
  torch::Tensor logits(const torch::Tensor& hidden);
  // Input embeddings -> logits of every position.
  torch::Tensor forward(const torch::Tensor& input_embeds, const AttentionContext& ctx);

  const LlamaOptions& options() const { return options_; }

  LlamaModel model{nullptr};
  nn::Linear lm_head{nullptr};
  QuantLinear lm_head_quant{nullptr};  // quantised models (named "lm_head"), int8

 private:
  LlamaOptions options_;
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace lego::llm
