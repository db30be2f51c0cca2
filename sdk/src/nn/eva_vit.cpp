#include "lego/sdk/nn/eva_vit.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/modules/container/modulelist.h>

#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/attention.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/nest.h"
#include "lego/sdk/weights.h"

namespace lego::nn {

void EvaVisionOptions::validate() const {
  if (image_size_ <= 0 || patch_size_ <= 0 || image_size_ % patch_size_ != 0) {
    throw Error(ErrorKind::InvalidArgument, "eva vision options: image_size (" + std::to_string(image_size_) +
                                                ") must be a positive multiple of patch_size (" + std::to_string(patch_size_) + ")");
  }
  if (width_ <= 0 || heads_ <= 0 || width_ % heads_ != 0 || layers_ <= 0 || mlp_dim_ <= 0) {
    throw Error(ErrorKind::InvalidArgument, "eva vision options: width must be a positive multiple of heads; "
                                            "layers and mlp_dim positive");
  }
}

EvaBlockImpl::EvaBlockImpl(const EvaVisionOptions& o) : options_(o) { reset(); }

void EvaBlockImpl::reset() {
  const int64_t w = options_.width();
  norm1 = register_module("norm1", make_layer_norm(w, options_.layer_norm_eps()));
  auto attn = register_module("attn", Nest());
  auto qkv = attn->register_module("qkv", Nest());
  qkv_weight = qkv->register_parameter("weight", uninitialised({3 * w, w}, "EVA attention"));
  q_bias = attn->register_parameter("q_bias", torch::empty({w}));
  v_bias = attn->register_parameter("v_bias", torch::empty({w}));
  proj = attn->register_module("proj", Linear(LinearOptions(w, w)));
  norm2 = register_module("norm2", make_layer_norm(w, options_.layer_norm_eps()));
  auto mlp = register_module("mlp", Nest());
  fc1 = mlp->register_module("fc1", Linear(LinearOptions(w, options_.mlp_dim())));
  fc2 = mlp->register_module("fc2", Linear(LinearOptions(options_.mlp_dim(), w)));
}

torch::Tensor EvaBlockImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), t = x.size(1), h = options_.heads(), d = options_.width() / h;
  auto y = norm1(x);
  // k has no bias: the qkv bias is [q_bias, 0, v_bias].
  auto bias = torch::cat({q_bias, torch::zeros_like(q_bias), v_bias});
  auto qkv = nn::linear(y, qkv_weight, bias).view({b, t, 3, h, d}).permute({2, 0, 3, 1, 4});
  auto out = nn::attention(qkv[0], qkv[1], qkv[2]);
  auto h1 = x + proj(out.transpose(1, 2).reshape({b, t, options_.width()}));
  return h1 + fc2(torch::gelu(fc1(norm2(h1))));
}

EvaVisionTransformerImpl::EvaVisionTransformerImpl(const EvaVisionOptions& o) : options_(o) {
  options_.validate();
  reset();
}

void EvaVisionTransformerImpl::reset() {
  const int64_t w = options_.width();
  cls_token = register_parameter("cls_token", torch::empty({1, 1, w}));
  pos_embed = register_parameter("pos_embed", uninitialised({1, options_.patches() + 1, w}, "EVA position embedding"));
  check_sizes({w, 3, options_.patch_size(), options_.patch_size()}, "EVA patch embedding");
  auto patch_embed = register_module("patch_embed", Nest());
  patch_proj = patch_embed->register_module(
      "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, w, options_.patch_size()).stride(options_.patch_size())));
  // The blocks live only in the list: clone() refills it with copies, which a second container of
  // pointers would not see.
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < options_.layers(); ++i) blocks->push_back(EvaBlock(options_));
}

torch::Tensor EvaVisionTransformerImpl::forward(const torch::Tensor& pixels) {
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != options_.image_size() ||
      pixels.size(3) != options_.image_size()) {
    throw Error(ErrorKind::InvalidArgument, "eva vision: expected pixels [B, 3, " + std::to_string(options_.image_size()) +
                                                ", " + std::to_string(options_.image_size()) + "], got " +
                                                shape_string(pixels.sizes()));
  }
  auto x = nn::conv2d(patch_proj, pixels.to(cls_token.scalar_type())).flatten(2).transpose(1, 2);
  x = torch::cat({cls_token.expand({x.size(0), 1, -1}), x}, 1) + pos_embed;
  for (size_t i = 0; i < blocks->size(); ++i) x = blocks->at<EvaBlockImpl>(i).forward(x);
  return x;
}

}  // namespace lego::nn
