// CLIP vision transformer (HF CLIPVisionTransformer layout and names), the image branch's encoder
// (shared/reference/lego-original.md section 2: CLIP ViT-L/14 at 336 px, feature = hidden state of
// layer -2 without the CLS token).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

// Defaults are CLIP ViT-L/14-336's (openai/clip-vit-large-patch14-336).
struct ClipVisionOptions {
  TORCH_ARG(int64_t, image_size) = 336;
  TORCH_ARG(int64_t, patch_size) = 14;
  TORCH_ARG(int64_t, width) = 1024;
  TORCH_ARG(int64_t, layers) = 24;
  TORCH_ARG(int64_t, heads) = 16;
  TORCH_ARG(int64_t, mlp_dim) = 4096;
  TORCH_ARG(double, layer_norm_eps) = 1e-5;

 public:
  int64_t patches() const { return (image_size_ / patch_size_) * (image_size_ / patch_size_); }
  void validate() const;  // throws lego::Error(InvalidArgument) naming the field
};

class ClipEmbeddingsImpl : public torch::nn::Cloneable<ClipEmbeddingsImpl> {
 public:
  explicit ClipEmbeddingsImpl(const ClipVisionOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& pixels);  // [B,3,S,S] -> [B, 1+patches, width]

  torch::Tensor class_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  Embedding position_embedding{nullptr};

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipEmbeddings);

class ClipAttentionImpl : public torch::nn::Cloneable<ClipAttentionImpl> {
 public:
  explicit ClipAttentionImpl(const ClipVisionOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Cloneable<ClipMlpImpl> {
 public:
  explicit ClipMlpImpl(const ClipVisionOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);  // fc2(quick_gelu(fc1(x)))

  Linear fc1{nullptr}, fc2{nullptr};

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Cloneable<ClipEncoderLayerImpl> {
 public:
  explicit ClipEncoderLayerImpl(const ClipVisionOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);  // pre-norm residual block

  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  ClipMlp mlp{nullptr};

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Cloneable<ClipEncoderImpl> {
 public:
  explicit ClipEncoderImpl(const ClipVisionOptions& o);
  void reset() override;

  torch::nn::ModuleList layers{nullptr};  // of ClipEncoderLayer

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipEncoder);

// Registered names match HF's CLIPVisionTransformer (`embeddings.`, `pre_layrnorm.`, `encoder.layers.N.`,
// `post_layernorm.`), so it loads from `...vision_model.` prefixes.
class ClipVisionTransformerImpl : public torch::nn::Cloneable<ClipVisionTransformerImpl> {
 public:
  explicit ClipVisionTransformerImpl(const ClipVisionOptions& o);
  void reset() override;
  // HF hidden_states[index] (index 0 = embeddings after pre_layrnorm, negative counts from the end);
  // layers after the requested one are not run.
  torch::Tensor hidden_state(const torch::Tensor& pixels, int64_t index);

  const ClipVisionOptions& options() const { return options_; }

  ClipEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};  // sic: HF's name
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};

 private:
  ClipVisionOptions options_;
};
TORCH_MODULE(ClipVisionTransformer);

}  // namespace lego::nn
