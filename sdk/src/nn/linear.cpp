#include "lego/sdk/nn/linear.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/linear.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
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

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return nn::linear(x, weight, bias); }

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

namespace {

bool cpu_has_native(torch::ScalarType dtype) {
#if defined(__x86_64__) || defined(__i386__)
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  static const bool fp16 = __builtin_cpu_supports("avx512fp16");
  return dtype == torch::kBFloat16 ? bf16 : fp16;
#else
  (void)dtype;
  return true;  // leave other architectures to libtorch
#endif
}

}  // namespace

bool cpu_half_forced_native() {
  static const bool forced = [] {
    const char* v = std::getenv("LEGO_CPU_HALF");
    return v != nullptr && std::strcmp(v, "native") == 0;
  }();
  return forced;
}

namespace {

// Whether autograd will record a product of these tensors.
bool records_grad(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return torch::GradMode::is_enabled() &&
         (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
}

// y = x W^T + b of half-precision tensors under autograd, in float32: the forward as the float32 route
// outside autograd, and the backward's products in float32 from up-cast copies of the saved tensors, each
// gradient rounded once to its tensor's dtype (what libtorch's half-precision backward does with its
// float accumulator). Only the half-precision tensors are saved, so the pass keeps half precision's memory.
class HalfLinearInFloat : public torch::autograd::Function<HalfLinearInFloat> {
 public:
  // No bias is nullopt: autograd takes an optional tensor, not an undefined one, for an input it may lack.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const std::optional<torch::Tensor>& bias) {
    ctx->save_for_backward({x, weight});
    if (bias) ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias->scalar_type());
    const auto f = torch::kFloat32;
    return torch::nn::functional::linear(x.to(f), weight.to(f), bias ? bias->to(f) : torch::Tensor()).to(x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto f = torch::kFloat32;
    const auto g = grads[0].to(f);
    const auto g_rows = g.reshape({-1, g.size(-1)});
    torch::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = g.matmul(weight.to(f)).to(x.scalar_type());
    if (ctx->needs_input_grad(1)) gw = g_rows.t().mm(x.reshape({-1, x.size(-1)}).to(f)).to(weight.scalar_type());
    const auto bias_dtype = ctx->saved_data.find("bias_dtype");  // absent: no bias, no third input
    if (bias_dtype != ctx->saved_data.end() && ctx->needs_input_grad(2)) {
      gb = g_rows.sum(0).to(static_cast<torch::ScalarType>(bias_dtype->second.toInt()));
    }
    return {gx, gw, gb};
  }
};

bool half_in_float(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const auto dtype = x.scalar_type();
  if (cpu_half_forced_native() || (dtype != torch::kBFloat16 && dtype != torch::kHalf) || weight.scalar_type() != dtype ||
      !x.is_cpu() || !weight.is_cpu() || x.dim() == 0 || x.size(-1) == 0 || cpu_has_native(dtype)) {
    return false;
  }
  // Up to 8 rows outside autograd is a decoding step: the LLM's own kernels or libtorch's serve it.
  return records_grad(x, weight, bias) || x.numel() / x.size(-1) > 8;
}

}  // namespace

bool half_product_in_float(const torch::Tensor& x, const torch::Tensor& weight) {
  return half_in_float(x, weight, torch::Tensor());
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!half_in_float(x, weight, bias)) return torch::nn::functional::linear(x, weight, bias);
  if (records_grad(x, weight, bias)) {
    return HalfLinearInFloat::apply(x, weight, bias.defined() ? std::optional<torch::Tensor>(bias) : std::nullopt);
  }
  const auto f = torch::kFloat32;
  return torch::nn::functional::linear(x.to(f), weight.to(f), bias.defined() ? bias.to(f) : bias).to(x.scalar_type());
}

torch::Tensor conv2d(const torch::nn::Conv2d& conv, const torch::Tensor& x) {
  const auto& o = conv->options;
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&o.padding());
  // Under autograd the casts record themselves: the gradients come back through them in float32 and are
  // rounded once to the input's and the weights' dtype.
  if (!half_in_float(x, conv->weight, conv->bias) || padding == nullptr ||
      !std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode())) {
    return conv.ptr()->forward(x);
  }
  const auto f = torch::kFloat32;
  const auto& b = conv->bias;
  return torch::nn::functional::conv2d(x.to(f), conv->weight.to(f),
                                       torch::nn::functional::Conv2dFuncOptions()
                                           .bias(b.defined() ? b.to(f) : b)
                                           .stride(o.stride())
                                           .padding(*padding)
                                           .dilation(o.dilation())
                                           .groups(o.groups()))
      .to(x.scalar_type());
}

torch::nn::LayerNorm make_layer_norm(int64_t width, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({width}).eps(eps));
}

struct ParameterInit::State {
  Scheme scheme;
  double scale;
  at::Generator gen;
};

ParameterInit::ParameterInit(Scheme scheme, double scale, uint64_t seed)
    : state_(std::make_unique<State>(State{scheme, scale, at::make_generator<at::CPUGeneratorImpl>(seed)})) {}

ParameterInit::~ParameterInit() = default;

// Biases 0, 1-D `weight`s 1, every other tensor N(0, std^2) with std the scale (Normal) or
// gain / sqrt(fan_in) (FanIn); only drawn tensors advance the generator.
torch::Tensor ParameterInit::next(const std::string& name, at::IntArrayRef sizes) {
  torch::NoGradGuard no_grad;
  const auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("bias")) return torch::zeros(sizes, torch::kFloat32);
  if (ends_with("weight") && sizes.size() == 1) return torch::ones(sizes, torch::kFloat32);  // normalisation scales
  double std = state_->scale;
  if (state_->scheme == Scheme::FanIn) {
    int64_t fan_in = sizes.empty() ? 1 : sizes.back();
    if (sizes.size() == 4) {  // a convolution kernel
      int64_t n = 1;
      for (const auto d : sizes) n *= d;
      fan_in = n / std::max<int64_t>(sizes[0], 1);
    }
    std = state_->scale / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  }
  return torch::empty(sizes, torch::kFloat32).normal_(0.0, std, state_->gen);
}

namespace {

void init_walk(torch::nn::Module& module, ParameterInit::Scheme scheme, double scale, uint64_t seed) {
  torch::NoGradGuard no_grad;
  ParameterInit init(scheme, scale, seed);
  for (auto& p : module.named_parameters(/*recurse=*/true)) p.value().copy_(init.next(p.key(), p.value().sizes()));
}

}  // namespace

void init_normal(torch::nn::Module& module, double std, uint64_t seed) {
  init_walk(module, ParameterInit::Scheme::Normal, std, seed);
}

void init_fan_in(torch::nn::Module& module, double gain, uint64_t seed) {
  init_walk(module, ParameterInit::Scheme::FanIn, gain, seed);
}

}  // namespace lego::nn
