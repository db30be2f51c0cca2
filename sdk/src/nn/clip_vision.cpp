#include "lego/sdk/nn/clip_vision.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/normalization.h>

#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/attention.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/weights.h"

namespace lego::nn {
void ClipVisionOptions::validate() const {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, "clip vision options: " + what); };
  if (image_size_ <= 0 || patch_size_ <= 0 || image_size_ % patch_size_ != 0) {
    bad("image_size (" + std::to_string(image_size_) + ") must be a positive multiple of patch_size (" +
        std::to_string(patch_size_) + ")");
  }
  if (width_ <= 0 || heads_ <= 0 || width_ % heads_ != 0) {
    bad("width (" + std::to_string(width_) + ") must be a positive multiple of heads (" + std::to_string(heads_) + ")");
  }
  if (layers_ <= 0 || mlp_dim_ <= 0) bad("layers and mlp_dim must be positive");
}

ClipEmbeddingsImpl::ClipEmbeddingsImpl(const ClipVisionOptions& o) : options_(o) { reset(); }

void ClipEmbeddingsImpl::reset() {
  check_sizes({options_.width(), 3, options_.patch_size(), options_.patch_size()}, "CLIP patch embedding");
  class_embedding = register_parameter("class_embedding", torch::empty({options_.width()}));
  patch_embedding = register_module(
      "patch_embedding", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, options_.width(), options_.patch_size())
                                               .stride(options_.patch_size())
                                               .bias(false)));
  position_embedding =
      register_module("position_embedding", Embedding(EmbeddingOptions(options_.patches() + 1, options_.width())));
}

torch::Tensor ClipEmbeddingsImpl::forward(const torch::Tensor& pixels) {
  const int64_t batch = pixels.size(0);
  auto patches = nn::conv2d(patch_embedding, pixels.to(patch_embedding->weight.scalar_type())).flatten(2).transpose(1, 2);
  auto cls = class_embedding.view({1, 1, -1}).expand({batch, 1, -1});
  return torch::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);
}

ClipAttentionImpl::ClipAttentionImpl(const ClipVisionOptions& o) : options_(o) { reset(); }

void ClipAttentionImpl::reset() {
  const int64_t w = options_.width();
  q_proj = register_module("q_proj", Linear(LinearOptions(w, w)));
  k_proj = register_module("k_proj", Linear(LinearOptions(w, w)));
  v_proj = register_module("v_proj", Linear(LinearOptions(w, w)));
  out_proj = register_module("out_proj", Linear(LinearOptions(w, w)));
}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), t = x.size(1), h = options_.heads(), d = options_.width() / h;
  auto split = [&](const torch::Tensor& y) { return y.view({b, t, h, d}).transpose(1, 2); };
  auto out = nn::attention(split(q_proj(x)), split(k_proj(x)), split(v_proj(x)));
  return out_proj(out.transpose(1, 2).reshape({b, t, options_.width()}));
}

ClipMlpImpl::ClipMlpImpl(const ClipVisionOptions& o) : options_(o) { reset(); }

void ClipMlpImpl::reset() {
  fc1 = register_module("fc1", Linear(LinearOptions(options_.width(), options_.mlp_dim())));
  fc2 = register_module("fc2", Linear(LinearOptions(options_.mlp_dim(), options_.width())));
}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& x) {
  auto h = fc1(x);
  return fc2(h * torch::sigmoid(1.702 * h));  // quick_gelu, CLIP's activation
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipVisionOptions& o) : options_(o) { reset(); }

void ClipEncoderLayerImpl::reset() {
  self_attn = register_module("self_attn", ClipAttention(options_));
  layer_norm1 = register_module("layer_norm1", make_layer_norm(options_.width(), options_.layer_norm_eps()));
  mlp = register_module("mlp", ClipMlp(options_));
  layer_norm2 = register_module("layer_norm2", make_layer_norm(options_.width(), options_.layer_norm_eps()));
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& x) {
  auto h = x + self_attn(layer_norm1(x));
  return h + mlp(layer_norm2(h));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipVisionOptions& o) : options_(o) { reset(); }

void ClipEncoderImpl::reset() {
  // The layers live only in the list: clone() refills it with copies, which a second container of
  // pointers would not see.
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options_.layers(); ++i) layers->push_back(ClipEncoderLayer(options_));
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const ClipVisionOptions& o) : options_(o) {
  options_.validate();
  reset();
}

void ClipVisionTransformerImpl::reset() {
  embeddings = register_module("embeddings", ClipEmbeddings(options_));
  pre_layrnorm = register_module("pre_layrnorm", make_layer_norm(options_.width(), options_.layer_norm_eps()));
  encoder = register_module("encoder", ClipEncoder(options_));
  post_layernorm = register_module("post_layernorm", make_layer_norm(options_.width(), options_.layer_norm_eps()));
}

torch::Tensor ClipVisionTransformerImpl::hidden_state(const torch::Tensor& pixels, int64_t index) {
  const int64_t count = options_.layers() + 1;  // embeddings + one per layer
  const int64_t at = index < 0 ? count + index : index;
  if (at < 0 || at >= count) {
    throw Error(ErrorKind::InvalidArgument, "clip vision: hidden state " + std::to_string(index) + " of " +
                                                std::to_string(count) + " does not exist");
  }
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != options_.image_size() ||
      pixels.size(3) != options_.image_size()) {
    throw Error(ErrorKind::InvalidArgument, "clip vision: expected pixels [B, 3, " + std::to_string(options_.image_size()) +
                                                ", " + std::to_string(options_.image_size()) + "], got " +
                                                shape_string(pixels.sizes()));
  }
  auto h = pre_layrnorm(embeddings(pixels));
  for (size_t i = 0; i < static_cast<size_t>(at); ++i) {
    h = encoder->layers->at<ClipEncoderLayerImpl>(i).forward(h);
  }
  return h;
}

}  // namespace lego::nn
