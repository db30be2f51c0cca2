// EVA ViT-g/14 as BLIP-2 uses it: the video branch's frame encoder (shared/reference/lego-original.md
// section 3): 39 pre-norm blocks, qkv without bias but with separate q and v biases (k's is zero),
// exact GELU, LayerNorm eps 1e-6, no final norm (BLIP-2 applies its own `ln_vision` after it).
// Registered names follow the released checkpoint under `visual_encoder.`: cls_token, pos_embed,
// patch_embed.proj, blocks.N.{norm1, attn.{qkv, q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

// Defaults: EVA ViT-g/14 at 224 px as in BLIP-2 (its last of 40 blocks dropped).
struct EvaVisionOptions {
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, patch_size) = 14;
  TORCH_ARG(int64_t, width) = 1408;
  TORCH_ARG(int64_t, layers) = 39;
  TORCH_ARG(int64_t, heads) = 16;
  TORCH_ARG(int64_t, mlp_dim) = 6144;
  TORCH_ARG(double, layer_norm_eps) = 1e-6;

 public:
  int64_t patches() const { return (image_size_ / patch_size_) * (image_size_ / patch_size_); }
  void validate() const;
};

class EvaBlockImpl : public torch::nn::Cloneable<EvaBlockImpl> {
 public:
  explicit EvaBlockImpl(const EvaVisionOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::Tensor qkv_weight, q_bias, v_bias;
  Linear proj{nullptr}, fc1{nullptr}, fc2{nullptr};

 private:
  EvaVisionOptions options_;
};
TORCH_MODULE(EvaBlock);

class EvaVisionTransformerImpl : public torch::nn::Cloneable<EvaVisionTransformerImpl> {
 public:
  explicit EvaVisionTransformerImpl(const EvaVisionOptions& o);
  void reset() override;
  // pixels [B, 3, S, S] -> [B, 1 + patches, width] (CLS first), without a final norm.
  torch::Tensor forward(const torch::Tensor& pixels);

  const EvaVisionOptions& options() const { return options_; }

  torch::Tensor cls_token, pos_embed;
  torch::nn::Conv2d patch_proj{nullptr};
  torch::nn::ModuleList blocks{nullptr};  // of EvaBlock

 private:
  EvaVisionOptions options_;
};
TORCH_MODULE(EvaVisionTransformer);

}  // namespace lego::nn
