// MasterWeights: bf16 parameters stepped through fp32 copies, as DeepSpeed's bf16 mode does; fp32 ones
// stepped in place.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lego/sdk/error.h"
#include "lego/train/master_weights.h"

namespace lego::train {
namespace {

torch::Tensor leaf(torch::Tensor t) { return t.set_requires_grad(true); }

TEST(MasterWeights, FloatParametersAreTheirOwnMasters) {
  auto a = leaf(torch::randn({3, 4})), b = leaf(torch::randn({4}));
  MasterWeights m({a, b}, {true, true});
  EXPECT_FALSE(m.copies());
  EXPECT_EQ(m.copy_bytes(), 0);
  ASSERT_EQ(m.stepped().size(), 2u);
  EXPECT_TRUE(m.stepped()[0].is_same(a));
  a.mutable_grad() = torch::ones_like(a);
  m.take_gradients();
  EXPECT_TRUE(a.grad().defined());  // untouched: the optimizer steps `a` itself
}

TEST(MasterWeights, HalfParametersGetFloatCopiesOfTheKeptOnesOnly) {
  torch::manual_seed(3);
  auto w = leaf(torch::randn({8, 8}).to(torch::kBFloat16));
  auto n = leaf(torch::randn({8}).to(torch::kBFloat16));
  MasterWeights m({w, n}, {true, false});
  EXPECT_TRUE(m.copies());
  EXPECT_EQ(m.copy_bytes(), 8 * 8 * 4);
  ASSERT_EQ(m.stepped().size(), 1u);
  const auto& master = m.stepped()[0];
  EXPECT_EQ(master.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(master.is_leaf());
  EXPECT_NE(master.data_ptr(), w.data_ptr());
  EXPECT_TRUE(torch::equal(master, w.to(torch::kFloat32)));
  EXPECT_FALSE(m.master_of(1).defined());
}

TEST(MasterWeights, GradientsMoveIntoFloatAndStepsRoundBackIntoTheModel) {
  torch::manual_seed(4);
  // In [1, 2), where bf16's spacing is 2^-7: steps of 1e-4 are below half of it.
  auto w = leaf((1 + torch::rand({16, 16})).to(torch::kBFloat16));
  auto unused = leaf(torch::randn({4}).to(torch::kBFloat16));
  MasterWeights m({w, unused}, {true, true});
  const auto x = torch::randn({5, 16}).to(torch::kBFloat16);
  torch::matmul(x, w).sum().backward();
  const auto bf16_grad = w.grad().clone();
  m.take_gradients();
  // The gradient moved: fp32 on the copy, released on the model.
  EXPECT_FALSE(w.grad().defined());
  ASSERT_TRUE(m.master_of(0).grad().defined());
  EXPECT_EQ(m.master_of(0).grad().scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(m.master_of(0).grad(), bf16_grad.to(torch::kFloat32)));
  EXPECT_FALSE(m.master_of(1).grad().defined());  // no gradient: AdamW skips it, as in one fp32 process

  // A step far below bf16's resolution accumulates in the copy and reaches the model once it is large enough.
  const auto before = w.detach().clone();
  torch::optim::SGD sgd(m.stepped(), torch::optim::SGDOptions(1.0));
  m.master_of(0).mutable_grad() = torch::full({16, 16}, -1e-4);
  sgd.step();
  m.write_back();
  EXPECT_TRUE(torch::equal(w, before)) << "one tiny step must not move the bf16 weights";
  EXPECT_FALSE(torch::equal(m.master_of(0), before.to(torch::kFloat32))) << "but the master keeps it";
  for (int i = 0; i < 99; ++i) {
    m.master_of(0).mutable_grad() = torch::full({16, 16}, -1e-4);
    sgd.step();
  }
  m.write_back();
  EXPECT_TRUE(torch::equal(w, m.master_of(0).to(torch::kBFloat16)));
  EXPECT_GT((w.to(torch::kFloat32) - before.to(torch::kFloat32)).abs().mean().item<double>(), 5e-3);
  EXPECT_EQ(w.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(w.requires_grad());
}

TEST(MasterWeights, RefusesFlagsThatDoNotMatchTheParameters) {
  auto w = leaf(torch::randn({2}).to(torch::kBFloat16));
  EXPECT_THROW(MasterWeights({w}, {true, false}), Error);
}

}  // namespace
}  // namespace lego::train
