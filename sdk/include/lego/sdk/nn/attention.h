// Scaled dot-product attention for the SDK's attention layers (ViT, Q-Former, ImageBind) and the LLM's:
// libtorch's SDPA, except where its half-precision CPU kernels are slow (DESIGN.md, sdk/nn).
#pragma once

#include <torch/types.h>

#include <optional>

namespace lego::nn {

// Whether attention on these inputs runs in float32 from up-cast copies: half-precision q, k and v on a CPU
// whose gradients will be computed, i.e. `training` (the caller's module is being trained or carries
// gradients back to one that is: a layer recomputed under activation checkpointing must pass the same
// value in its no-grad forward pass as in the recomputation) or grad mode on with any of them requiring
// gradients. libtorch's bf16 kernels for the CPU run forward and backward 1.2 to 4 times slower than
// float32's on the shapes lego trains (head widths 16 to 64), while forward-only they are as fast, so
// inference keeps them. LEGO_CPU_HALF=native keeps them everywhere.
bool half_attention_in_float(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool training);

// softmax(q k^T / sqrt(d) + mask) v over [B, heads, T, d] inputs, as at::scaled_dot_product_attention(q, k,
// v, mask, 0, causal, default scale, gqa); in float32 and rounded back to q's dtype where
// half_attention_in_float says so.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const std::optional<torch::Tensor>& mask = std::nullopt, bool causal = false, bool gqa = false,
                        bool training = false);

}  // namespace lego::nn
