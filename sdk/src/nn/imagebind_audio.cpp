#include "lego/sdk/nn/imagebind_audio.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cmath>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/attention.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/nest.h"
#include "lego/sdk/weights.h"

namespace lego::nn {


void ImageBindAudioOptions::validate() const {
  if (width_ <= 0 || heads_ <= 0 || width_ % heads_ != 0 || layers_ <= 0 || out_dim_ <= 0 || mlp_dim_ <= 0) {
    throw Error(ErrorKind::InvalidArgument, "imagebind audio options: width must be a positive multiple of heads; "
                                            "layers, mlp_dim and out_dim positive");
  }
  if (kernel_ <= 0 || stride_ <= 0 || mel_bins_ < kernel_ || target_length_ < kernel_) {
    throw Error(ErrorKind::InvalidArgument, "imagebind audio options: the stem kernel must fit the fbank");
  }
}

ImageBindBlockImpl::ImageBindBlockImpl(const ImageBindAudioOptions& o) : options_(o) { reset(); }

void ImageBindBlockImpl::reset() {
  const int64_t w = options_.width();
  auto attn = register_module("attn", Nest());
  in_proj_weight = attn->register_parameter("in_proj_weight", uninitialised({3 * w, w}, "ImageBind attention"));
  in_proj_bias = attn->register_parameter("in_proj_bias", torch::empty({3 * w}));
  bias_k = attn->register_parameter("bias_k", torch::empty({1, 1, w}));
  bias_v = attn->register_parameter("bias_v", torch::empty({1, 1, w}));
  out_proj = attn->register_module("out_proj", Linear(LinearOptions(w, w)));
  norm_1 = register_module("norm_1", make_layer_norm(w, options_.layer_norm_eps()));
  auto mlp = register_module("mlp", Nest());
  fc1 = mlp->register_module("fc1", Linear(LinearOptions(w, options_.mlp_dim())));
  fc2 = mlp->register_module("fc2", Linear(LinearOptions(options_.mlp_dim(), w)));
  norm_2 = register_module("norm_2", make_layer_norm(w, options_.layer_norm_eps()));
}

torch::Tensor ImageBindBlockImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), t = x.size(1), h = options_.heads(), d = options_.width() / h;
  auto y = norm_1(x);
  auto qkv = nn::linear(y, in_proj_weight, in_proj_bias).chunk(3, -1);
  // add_bias_kv: one more key and value, the learned biases, appended after the sequence.
  auto k = torch::cat({qkv[1], bias_k.expand({b, 1, -1})}, 1);
  auto v = torch::cat({qkv[2], bias_v.expand({b, 1, -1})}, 1);
  auto split = [&](const torch::Tensor& z) { return z.view({b, z.size(1), h, d}).transpose(1, 2); };
  auto out = nn::attention(split(qkv[0]), split(k), split(v));
  auto h1 = x + out_proj(out.transpose(1, 2).reshape({b, t, options_.width()}));
  return h1 + fc2(torch::gelu(fc1(norm_2(h1))));
}

ImageBindAudioEncoderImpl::ImageBindAudioEncoderImpl(const ImageBindAudioOptions& o) : options_(o) {
  options_.validate();
  reset();
}

void ImageBindAudioEncoderImpl::reset() {
  const int64_t w = options_.width();
  auto pre = register_module("modality_preprocessors", Nest())->register_module("audio", Nest());
  cls_token = pre->register_parameter("cls_token", torch::empty({1, 1, w}));
  check_sizes({w, 1, options_.kernel(), options_.kernel()}, "ImageBind audio stem");
  auto rgbt_stem = pre->register_module("rgbt_stem", Nest());
  // A single-layer stem: ImageBind's PatchEmbedGeneric stores it as `proj` itself, not `proj.0`.
  stem = rgbt_stem->register_module(
      "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, w, options_.kernel()).stride(options_.stride()).bias(false)));
  stem_norm = rgbt_stem->register_module("norm_layer", make_layer_norm(w, 1e-5));  // nn.LayerNorm's default eps
  pos_embed = pre->register_module("pos_embedding_helper", Nest())
                  ->register_parameter("pos_embed", uninitialised({1, options_.patches() + 1, w}, "ImageBind position embedding"));
  auto trunk = register_module("modality_trunks", Nest())->register_module("audio", Nest());
  // The blocks live only in the list: clone() refills it with copies, which a second container of
  // pointers would not see.
  blocks = trunk->register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < options_.layers(); ++i) blocks->push_back(ImageBindBlock(options_));
  auto heads = register_module("modality_heads", Nest())->register_module("audio", Nest());
  head_norm = heads->register_module("0", make_layer_norm(w, options_.layer_norm_eps()));
  head = heads->register_module("2", Linear(LinearOptions(w, options_.out_dim()).bias(false)));
}

torch::Tensor ImageBindAudioEncoderImpl::forward(const torch::Tensor& fbank) {
  if (fbank.dim() != 4 || fbank.size(1) != 1 || fbank.size(2) != options_.mel_bins() ||
      fbank.size(3) != options_.target_length()) {
    throw Error(ErrorKind::InvalidArgument, "imagebind audio: expected fbank [B, 1, " + std::to_string(options_.mel_bins()) +
                                                ", " + std::to_string(options_.target_length()) + "], got " +
                                                shape_string(fbank.sizes()));
  }
  auto x = stem_norm(nn::conv2d(stem, fbank.to(cls_token.scalar_type())).flatten(2).transpose(1, 2));
  x = torch::cat({cls_token.expand({x.size(0), 1, -1}), x}, 1) + pos_embed;
  for (size_t i = 0; i < blocks->size(); ++i) x = blocks->at<ImageBindBlockImpl>(i).forward(x);
  auto cls = head(head_norm(x).select(1, 0));
  auto normed = torch::nn::functional::normalize(cls, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  return normed * kAudioLogitScale;
}

}  // namespace lego::nn
