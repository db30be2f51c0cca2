// nn::linear and nn::conv2d: half-precision products that run in float32 on CPUs without native bf16/fp16
// dot products give libtorch's result within one rounding of the output (both accumulate in float and
// round once), keep shapes and dtypes, and leave autograd and small products to libtorch unchanged.
// nn::attention: half-precision attention on a CPU runs in float32 wherever gradients will be computed
// (training), and as libtorch's own kernels elsewhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lego/sdk/nn/attention.h"
#include "lego/sdk/nn/linear.h"

namespace lego {
namespace {

// |a - b| within `ulps` units of the last place (2^-8 for bf16) of `scale`, the product of the magnitudes
// (|x| |W|^T + |b|): the bound of a float-accumulated product rounded to half precision, which holds even
// where the terms cancel.
void expect_within_rounding(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& scale, double unit,
                            double ulps = 2) {
  ASSERT_EQ(a.sizes(), b.sizes());
  ASSERT_EQ(a.scalar_type(), b.scalar_type());
  const auto diff = (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs();
  EXPECT_TRUE((diff <= scale * unit * ulps + 1e-6).all().item<bool>()) << "max |a - b| " << diff.max().item<double>();
}

TEST(HalfProducts, LinearGivesLibtorchsResultWithinOneRounding) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    const double unit = dtype == torch::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
    const auto x = torch::randn({3, 40, 96}).to(dtype);  // 120 rows
    const auto w = (torch::randn({72, 96}) * 0.1).to(dtype);
    const auto b = torch::randn({72}).to(dtype);
    const auto f = torch::kFloat32;
    const auto scale = torch::nn::functional::linear(x.to(f).abs(), w.to(f).abs());
    ASSERT_NO_FATAL_FAILURE(expect_within_rounding(nn::linear(x, w, b), torch::nn::functional::linear(x, w, b),
                                                   scale + b.to(f).abs(), unit));
    ASSERT_NO_FATAL_FAILURE(
        expect_within_rounding(nn::linear(x, w, torch::Tensor()), torch::nn::functional::linear(x, w), scale, unit));
    // The float32 route itself: one rounding of the float product.
    if (nn::half_product_in_float(x, w)) {
      EXPECT_TRUE(torch::equal(nn::linear(x, w, b),
                               torch::nn::functional::linear(x.to(torch::kFloat32), w.to(torch::kFloat32), b.to(torch::kFloat32)).to(dtype)));
    }
  }
}

TEST(HalfProducts, OnlyLargeHalfProductsOutsideAutogradLeaveLibtorch) {
  const auto w = torch::randn({8, 16}).to(torch::kBFloat16);
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(nn::half_product_in_float(torch::randn({8, 16}).to(torch::kBFloat16), w));  // 8 rows: decoding
    EXPECT_FALSE(nn::half_product_in_float(torch::randn({9, 16}), torch::randn({8, 16})));  // float32
    EXPECT_FALSE(nn::half_product_in_float(torch::randn({9, 16}).to(torch::kBFloat16), w.to(torch::kHalf)));
  }
  // Under autograd libtorch's own product runs, and gradients flow.
  const auto x = torch::randn({20, 16}).to(torch::kBFloat16).requires_grad_();
  EXPECT_FALSE(nn::half_product_in_float(x, w));
  nn::linear(x, w, torch::Tensor()).sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

TEST(HalfProducts, PatchConvolutionsGiveLibtorchsResultWithinOneRounding) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  // A ViT's patch stem (kernel = stride) and ImageBind's overlapping audio stem (kernel 16, stride 10).
  for (const auto& [options, channels] : {std::pair{torch::nn::Conv2dOptions(3, 24, 14).stride(14), 3},
                                          std::pair{torch::nn::Conv2dOptions(1, 24, 16).stride(10).bias(false), 1}}) {
    torch::nn::Conv2d conv(options);
    conv->to(torch::kBFloat16);
    const auto x = torch::randn({2, channels, 56, 66}).to(torch::kBFloat16);
    const auto f = torch::kFloat32;
    auto scale = torch::nn::functional::conv2d(x.to(f).abs(), conv->weight.to(f).abs(),
                                               torch::nn::functional::Conv2dFuncOptions().stride(options.stride()));
    if (conv->bias.defined()) scale = scale + conv->bias.to(f).abs().view({1, -1, 1, 1});
    ASSERT_NO_FATAL_FAILURE(expect_within_rounding(nn::conv2d(conv, x), conv->forward(x), scale, 1.0 / 256));
  }
}

TEST(HalfAttention, TrainingRunsInFloatAndInferenceKeepsLibtorchsKernels) {
  torch::manual_seed(5);
  const auto dtype = torch::kBFloat16;
  const auto q = torch::randn({2, 4, 9, 16}).to(dtype), k = torch::randn({2, 2, 9, 16}).to(dtype),
             v = torch::randn({2, 2, 9, 16}).to(dtype);
  const auto f = torch::kFloat32;
  const auto in_float = at::scaled_dot_product_attention(q.to(f), k.to(f), v.to(f), std::nullopt, 0.0, true,
                                                         std::nullopt, true).to(dtype);
  const auto native = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, true, std::nullopt, true);
  {
    torch::NoGradGuard no_grad;  // inference, and a checkpointed layer's first pass (training says which)
    EXPECT_FALSE(nn::half_attention_in_float(q, k, v, false));
    EXPECT_TRUE(torch::equal(nn::attention(q, k, v, std::nullopt, true, true), native));
    EXPECT_TRUE(nn::half_attention_in_float(q, k, v, true));
    EXPECT_TRUE(torch::equal(nn::attention(q, k, v, std::nullopt, true, true, true), in_float));
  }
  // Grad mode with an input that requires gradients: float32, and the gradient comes back in bf16.
  const auto qg = q.clone().requires_grad_(true);
  EXPECT_TRUE(nn::half_attention_in_float(qg, k, v, false));
  auto out = nn::attention(qg, k, v, std::nullopt, true, true);
  EXPECT_EQ(out.scalar_type(), dtype);
  EXPECT_TRUE(torch::equal(out.detach(), in_float));
  out.sum().backward();
  ASSERT_TRUE(qg.grad().defined());
  EXPECT_EQ(qg.grad().scalar_type(), dtype);
  // Float32 inputs, and a boolean mask, go to libtorch as they are.
  const auto mask = torch::ones({2, 1, 9, 9}, torch::kBool).tril();
  const auto qf = q.to(f).requires_grad_(true);
  EXPECT_FALSE(nn::half_attention_in_float(qf, k.to(f), v.to(f), true));
  EXPECT_TRUE(torch::equal(nn::attention(q, k, v, mask, false, true, true),
                           at::scaled_dot_product_attention(q.to(f), k.to(f), v.to(f), mask, 0.0, false, std::nullopt, true)
                               .to(dtype)));
}

}  // namespace
}  // namespace lego
