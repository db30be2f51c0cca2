#include "lego/train/master_weights.h"

#include <torch/torch.h>

#include "lego/sdk/error.h"

namespace lego::train {

MasterWeights::MasterWeights(std::vector<torch::Tensor> params, const std::vector<bool>& keep)
    : params_(std::move(params)), master_(params_.size()) {
  if (keep.size() != params_.size()) {
    throw Error(ErrorKind::InvalidArgument, "master weights: " + std::to_string(keep.size()) + " flags for " +
                                                std::to_string(params_.size()) + " parameters");
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!keep[i]) continue;
    const auto& p = params_[i];
    if (p.scalar_type() == torch::kFloat32) {
      master_[i] = p;
    } else {
      // A leaf of its own: the optimizer's state and steps live on it, never in the model's graph.
      master_[i] = p.detach().to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true).set_requires_grad(true);
      copies_ = true;
    }
    stepped_.push_back(master_[i]);
  }
}

int64_t MasterWeights::copy_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (has_copy(i)) bytes += master_[i].numel() * 4;
  }
  return bytes;
}

void MasterWeights::take_gradients() {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!has_copy(i)) continue;
    auto& g = params_[i].mutable_grad();
    master_[i].mutable_grad() = g.defined() ? g.to(torch::kFloat32) : torch::Tensor();
    g = torch::Tensor();
  }
}

void MasterWeights::write_back() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (has_copy(i)) params_[i].copy_(master_[i]);
  }
}

}  // namespace lego::train
