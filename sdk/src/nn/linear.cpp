#include "lego/sdk/nn/linear.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "lego/sdk/weights.h"

namespace lego::nn {

torch::Tensor uninitialised(at::IntArrayRef sizes, const std::string& what) {
  check_sizes(sizes, what);
  return torch::empty(sizes);
}

void check_sizes(at::IntArrayRef sizes, const std::string& what) {
  double elements = 1;
  for (const auto n : sizes) {
    if (n <= 0) {
      throw Error(ErrorKind::InvalidArgument, what + ": sizes must be positive, got " + shape_string(sizes));
    }
    elements *= static_cast<double>(n);
  }
  require_allocatable(4.0 * elements, what + " of shape " + shape_string(sizes));
}

LinearImpl::LinearImpl(const LinearOptions& options_) : options(options_) { reset(); }

void LinearImpl::reset() {
  weight = register_parameter("weight", uninitialised({options.out_features(), options.in_features()}, "linear layer"));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty({options.out_features()}));
  } else {
    bias = torch::Tensor();
  }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return torch::nn::functional::linear(x, weight, bias); }

EmbeddingImpl::EmbeddingImpl(const EmbeddingOptions& options_) : options(options_) { reset(); }

void EmbeddingImpl::reset() {
  weight = register_parameter("weight",
                              uninitialised({options.num_embeddings(), options.embedding_dim()}, "embedding table"));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>();
    const auto hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= options.num_embeddings()) {
      throw Error(ErrorKind::InvalidArgument, "embedding: token id " + std::to_string(lo < 0 ? lo : hi) +
                                                  " is outside the table of " +
                                                  std::to_string(options.num_embeddings()));
    }
  }
  return weight.index_select(0, ids.reshape(-1)).view([&] {
    auto shape = ids.sizes().vec();
    shape.push_back(options.embedding_dim());
    return shape;
  }());
}

torch::nn::LayerNorm make_layer_norm(int64_t width, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(eps));
}

namespace {

// Biases 0, 1-D `weight`s 1, every other tensor N(0, std_of(tensor)^2), drawn in parameter order.
template <typename StdOf>
void init_walk(torch::nn::Module& module, uint64_t seed, StdOf std_of) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    auto& t = p.value();
    auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with("bias")) {
      t.zero_();
    } else if (ends_with("weight") && t.dim() == 1) {
      t.fill_(1.0);  // normalisation scales
    } else {
      t.copy_(torch::empty(t.sizes(), torch::kFloat32).normal_(0.0, std_of(t), gen));
    }
  }
}

}  // namespace

void init_normal(torch::nn::Module& module, double std, uint64_t seed) {
  init_walk(module, seed, [std](const torch::Tensor&) { return std; });
}

void init_fan_in(torch::nn::Module& module, double gain, uint64_t seed) {
  init_walk(module, seed, [gain](const torch::Tensor& t) {
    int64_t fan_in = t.dim() == 0 ? 1 : t.size(-1);
    if (t.dim() == 4) fan_in = t.numel() / std::max<int64_t>(t.size(0), 1);  // a convolution kernel
    return gain / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  });
}

}  // namespace lego::nn
