// Projector: encoder features -> LLM embeddings. "linear" (one Linear, parameters `weight`/`bias`) or
// "mlp2x_gelu" (Linear, GELU, Linear as `0.` and `2.`, LLaVA's names; the LEGO image branch's).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

struct ProjectorOptions {
  ProjectorOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(std::string, type) = "mlp2x_gelu";
};

class ProjectorImpl : public torch::nn::Cloneable<ProjectorImpl> {
 public:
  explicit ProjectorImpl(const ProjectorOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  ProjectorOptions options;
  Linear first{nullptr};   // "0" (mlp2x_gelu)
  Linear second{nullptr};  // "2" (mlp2x_gelu)
  torch::Tensor weight, bias;  // linear
};
TORCH_MODULE(Projector);

}  // namespace lego::nn
