// nn::linear and nn::conv2d: half-precision products that run in float32 on CPUs without native bf16/fp16
// dot products give libtorch's result within one rounding of the output (both accumulate in float and
// round once), also for their gradients under autograd, keep shapes and dtypes, and leave small products
// outside autograd to libtorch unchanged.
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

TEST(HalfProducts, SmallAndFloatProductsOutsideAutogradLeaveLibtorch) {
  const auto w = torch::randn({8, 16}).to(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(nn::half_product_in_float(torch::randn({8, 16}).to(torch::kBFloat16), w));  // 8 rows: decoding
  EXPECT_FALSE(nn::half_product_in_float(torch::randn({9, 16}), torch::randn({8, 16})));  // float32
  EXPECT_FALSE(nn::half_product_in_float(torch::randn({9, 16}).to(torch::kBFloat16), w.to(torch::kHalf)));
}

// Under autograd (training) the product and its gradients are libtorch's within one rounding of each; on
// the float32 route they are the float32 product and gradients rounded once, whatever the row count.
TEST(HalfProducts, GradientsUnderAutogradAreLibtorchsWithinOneRounding) {
  torch::manual_seed(5);
  const auto f = torch::kFloat32;
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    const double unit = dtype == torch::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
    const auto x0 = torch::randn({3, 40, 96}).to(dtype);
    const auto w0 = (torch::randn({72, 96}) * 0.1).to(dtype);
    const auto b0 = torch::randn({72}).to(dtype);
    const auto g = torch::randn({3, 40, 72}).to(dtype);
    // The same leaves in `dtype` (lego's product, then libtorch's) and in float32.
    auto leaves = [&](torch::ScalarType t) {
      return std::vector<torch::Tensor>{x0.to(t).clone().requires_grad_(), w0.to(t).clone().requires_grad_(),
                                        b0.to(t).clone().requires_grad_()};
    };
    const auto ours = leaves(dtype);
    const auto theirs = leaves(dtype);
    const auto full = leaves(f);
    const auto y = nn::linear(ours[0], ours[1], ours[2]);
    y.backward(g);
    const auto y_theirs = torch::nn::functional::linear(theirs[0], theirs[1], theirs[2]);
    y_theirs.backward(g);
    const auto y_full = torch::nn::functional::linear(full[0], full[1], full[2]);
    y_full.backward(g.to(f));
    // Bounds: |g| |W| for dx, |g|^T |x| for dW, the column sums of |g| for db.
    const auto ga = g.to(f).abs().reshape({-1, 72});
    const auto xa = x0.to(f).abs().reshape({-1, 96});
    const std::vector<torch::Tensor> scales = {ga.mm(w0.to(f).abs()).view({3, 40, 96}), ga.t().mm(xa), ga.sum(0)};
    ASSERT_NO_FATAL_FAILURE(expect_within_rounding(
        y, y_theirs, torch::nn::functional::linear(x0.to(f).abs(), w0.to(f).abs()) + b0.to(f).abs(), unit));
    for (size_t i = 0; i < 3; ++i) {
      SCOPED_TRACE(i);
      ASSERT_TRUE(ours[i].grad().defined());
      ASSERT_NO_FATAL_FAILURE(expect_within_rounding(ours[i].grad(), theirs[i].grad(), scales[i], unit));
    }
    if (nn::half_product_in_float(ours[0], ours[1])) {
      EXPECT_NE(y.grad_fn()->name().find("HalfLinearInFloat"), std::string::npos) << y.grad_fn()->name();
      EXPECT_TRUE(torch::equal(y, y_full.to(dtype)));
      for (size_t i = 0; i < 3; ++i) {
        SCOPED_TRACE(i);
        ASSERT_NO_FATAL_FAILURE(expect_within_rounding(ours[i].grad(), full[i].grad().to(dtype), scales[i], unit, 1));
      }
    }
    // A frozen weight gets no gradient; the input still does, with a bias or without one.
    for (const auto& bias : {b0, torch::Tensor()}) {
      const auto x = x0.clone().requires_grad_();
      const auto y_frozen = nn::linear(x, w0, bias);
      y_frozen.backward(g);
      ASSERT_TRUE(x.grad().defined());
      EXPECT_EQ(x.grad().scalar_type(), dtype);
      ASSERT_NO_FATAL_FAILURE(expect_within_rounding(x.grad(), theirs[0].grad(), scales[0], unit));
    }
    // No bias, every gradient.
    const auto unbiased = leaves(dtype);
    const auto unbiased_theirs = leaves(dtype);
    nn::linear(unbiased[0], unbiased[1], torch::Tensor()).backward(g);
    torch::nn::functional::linear(unbiased_theirs[0], unbiased_theirs[1]).backward(g);
    for (size_t i = 0; i < 2; ++i) {
      ASSERT_NO_FATAL_FAILURE(expect_within_rounding(unbiased[i].grad(), unbiased_theirs[i].grad(), scales[i], unit));
    }
    EXPECT_FALSE(unbiased[2].grad().defined());
    // On the float32 route a float32 bias beside half-precision weights gets its gradient in float32
    // (libtorch's own product refuses the mix).
    const auto mixed = leaves(dtype);
    if (nn::half_product_in_float(mixed[0], mixed[1])) {
      const auto b32 = b0.to(f).clone().requires_grad_();
      const auto y_mixed = nn::linear(mixed[0], mixed[1], b32);
      EXPECT_EQ(y_mixed.scalar_type(), dtype);
      y_mixed.backward(g);
      ASSERT_TRUE(b32.grad().defined());
      EXPECT_EQ(b32.grad().scalar_type(), f);
      EXPECT_TRUE(torch::allclose(b32.grad(), g.to(f).reshape({-1, 72}).sum(0), 1e-5, 1e-5));
    }
  }
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

TEST(HalfProducts, PatchConvolutionGradientsAreLibtorchsWithinOneRounding) {
  torch::manual_seed(6);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 24, 14).stride(14));
  conv->to(torch::kBFloat16);
  torch::nn::Conv2d twin(torch::nn::Conv2dOptions(3, 24, 14).stride(14));
  twin->to(torch::kBFloat16);
  {
    torch::NoGradGuard no_grad;
    twin->weight.copy_(conv->weight);
    twin->bias.copy_(conv->bias);
  }
  const auto x0 = torch::randn({2, 3, 56, 56}).to(torch::kBFloat16);
  const auto x = x0.clone().requires_grad_();
  const auto x_twin = x0.clone().requires_grad_();
  const auto y = nn::conv2d(conv, x);
  const auto g = torch::randn(y.sizes()).to(torch::kBFloat16);
  y.backward(g);
  twin->forward(x_twin).backward(g);
  const auto f = torch::kFloat32;
  // Bound of each weight's gradient: the sum over the patches of |g| |x|, by the same convolution's
  // weight gradient of the magnitudes.
  auto xa = x0.to(f).abs().requires_grad_(false);
  auto wa = conv->weight.detach().to(f).abs().requires_grad_();
  torch::nn::functional::conv2d(xa, wa, torch::nn::functional::Conv2dFuncOptions().stride(14)).backward(g.to(f).abs());
  ASSERT_NO_FATAL_FAILURE(expect_within_rounding(conv->weight.grad(), twin->weight.grad(), wa.grad(), 1.0 / 256));
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  const auto xg_scale = torch::nn::functional::conv_transpose2d(
      g.to(f).abs(), conv->weight.detach().to(f).abs(), torch::nn::functional::ConvTranspose2dFuncOptions().stride(14));
  ASSERT_NO_FATAL_FAILURE(expect_within_rounding(x.grad(), x_twin.grad(), xg_scale, 1.0 / 256));
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
