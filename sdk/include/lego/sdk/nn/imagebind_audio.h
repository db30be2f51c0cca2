// ImageBind-huge's audio path, the sound branch's encoder (shared/reference/lego-original.md section 4):
// a [1, 128, 204] log-mel clip -> Conv2d(1->768, kernel 16, stride 10, no bias) -> 12 x 19 = 228 patches
// -> LayerNorm; CLS prepended; learned positions; 12 pre-norm blocks whose attention has bias_k/bias_v
// (torch MultiheadAttention's add_bias_kv); head LayerNorm -> CLS -> Linear(768 -> 1024, no bias);
// L2-normalised and scaled by the fixed logit scale (20). Registered names are ImageBind's
// (`modality_preprocessors.audio...`, `modality_trunks.audio.blocks.N...`, `modality_heads.audio...`), as
// they sit under `audio_encoder.` in the release. The logit scale is fixed in ImageBind (not learnable),
// so its buffer (`modality_postprocessors.audio.1.log_logit_scale`) is a constant here, not a weight.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

// Defaults: ImageBind-huge audio.
struct ImageBindAudioOptions {
  TORCH_ARG(int64_t, mel_bins) = 128;
  TORCH_ARG(int64_t, target_length) = 204;
  TORCH_ARG(int64_t, kernel) = 16;
  TORCH_ARG(int64_t, stride) = 10;
  TORCH_ARG(int64_t, width) = 768;
  TORCH_ARG(int64_t, layers) = 12;
  TORCH_ARG(int64_t, heads) = 12;
  TORCH_ARG(int64_t, mlp_dim) = 3072;
  TORCH_ARG(int64_t, out_dim) = 1024;
  TORCH_ARG(double, layer_norm_eps) = 1e-6;

 public:
  int64_t patches() const {
    return ((mel_bins_ - kernel_) / stride_ + 1) * ((target_length_ - kernel_) / stride_ + 1);
  }
  void validate() const;
};

class ImageBindBlockImpl : public torch::nn::Cloneable<ImageBindBlockImpl> {
 public:
  explicit ImageBindBlockImpl(const ImageBindAudioOptions& o);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor in_proj_weight, in_proj_bias, bias_k, bias_v;
  Linear out_proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm norm_1{nullptr}, norm_2{nullptr};

 private:
  ImageBindAudioOptions options_;
};
TORCH_MODULE(ImageBindBlock);

class ImageBindAudioEncoderImpl : public torch::nn::Cloneable<ImageBindAudioEncoderImpl> {
 public:
  explicit ImageBindAudioEncoderImpl(const ImageBindAudioOptions& o);
  void reset() override;
  // fbank clips [B, 1, mel_bins, target_length] -> [B, out_dim], normalised x logit scale.
  torch::Tensor forward(const torch::Tensor& fbank);

  const ImageBindAudioOptions& options() const { return options_; }

  // ImageBind's audio LearnableLogitScaling(logit_scale_init=20, learnable=False).
  static constexpr double kAudioLogitScale = 20.0;

  torch::Tensor cls_token, pos_embed;
  torch::nn::Conv2d stem{nullptr};
  torch::nn::LayerNorm stem_norm{nullptr}, head_norm{nullptr};
  torch::nn::ModuleList blocks{nullptr};  // of ImageBindBlock, as `modality_trunks.audio.blocks`
  Linear head{nullptr};

 private:
  ImageBindAudioOptions options_;
};
TORCH_MODULE(ImageBindAudioEncoder);

}  // namespace lego::nn
