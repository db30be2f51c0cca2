#include "lego/sdk/nn/attention.h"

#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/autograd.h>

#include "lego/sdk/nn/linear.h"

namespace lego::nn {

bool half_attention_in_float(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool training) {
  const auto dtype = q.scalar_type();
  if ((dtype != torch::kBFloat16 && dtype != torch::kHalf) || !q.is_cpu() || cpu_half_forced_native()) return false;
  return training || (torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()));
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const std::optional<torch::Tensor>& mask, bool causal, bool gqa, bool training) {
  if (!half_attention_in_float(q, k, v, training)) {
    return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, causal, /*scale=*/std::nullopt, gqa);
  }
  const auto f = torch::kFloat32;
  std::optional<torch::Tensor> m = mask;
  if (m && m->is_floating_point()) m = m->to(f);  // an additive mask takes the query's dtype
  return at::scaled_dot_product_attention(q.to(f), k.to(f), v.to(f), m, 0.0, causal, std::nullopt, gqa)
      .to(q.scalar_type());
}

}  // namespace lego::nn
