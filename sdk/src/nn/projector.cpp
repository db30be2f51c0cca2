#include "lego/sdk/nn/projector.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/linear.h>

#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"

namespace lego::nn {

ProjectorImpl::ProjectorImpl(const ProjectorOptions& options_) : options(options_) { reset(); }

void ProjectorImpl::reset() {
  if (options.type() == "mlp2x_gelu") {
    first = register_module("0", Linear(LinearOptions(options.in_features(), options.out_features())));
    second = register_module("2", Linear(LinearOptions(options.out_features(), options.out_features())));
  } else if (options.type() == "linear") {
    weight = register_parameter("weight", uninitialised({options.out_features(), options.in_features()}, "projector"));
    bias = register_parameter("bias", torch::empty({options.out_features()}));
  } else {
    throw Error(ErrorKind::Unsupported, "projector type '" + options.type() + "' (want linear or mlp2x_gelu)");
  }
}

torch::Tensor ProjectorImpl::forward(const torch::Tensor& x) {
  if (first) return second(torch::gelu(first(x)));
  return nn::linear(x, weight, bias);
}

}  // namespace lego::nn
