// GradientSync over two ranks (a child process each, Gloo over loopback): which gradients are summed,
// which stay undefined, and the error for a parameter whose gradient arrives behind autograd's back.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <exception>
#include <iostream>
#include <functional>
#include <string>
#include <vector>

#include "lego/dist/group.h"
#include "lego/sdk/error.h"

namespace lego::dist {
namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    throw std::runtime_error("no free port");
  }
  close(fd);
  return ntohs(a.sin_port);
}

// Three trained tensors per rank, the same values on both.
struct Params {
  torch::Tensor a = torch::arange(3, torch::kFloat32).add(1).requires_grad_(true);
  torch::Tensor b = torch::arange(2, torch::kFloat32).add(4).requires_grad_(true);
  torch::Tensor c = torch::arange(4, torch::kFloat32).add(6).requires_grad_(true);
  std::vector<torch::Tensor> all() const { return {a, b, c}; }
};

// Runs body(rank, group, params) on two ranks at once, each a child process as a launcher would start them
// (two process groups in one process race inside c10d's flight recorder). A child reports its failed
// expectations as gtest prints them, and its exit status says whether it had any.
void on_two_ranks(const std::function<void(int, Group&, Params&)>& body) {
  World world;
  world.size = 2;
  world.master_port = free_port();
  world.launcher = "test";
  std::vector<pid_t> ranks;
  for (int r = 0; r < 2; ++r) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
      int status = 0;
      try {
        World w = world;
        w.rank = r;
        w.local_rank = r;
        auto group = Group::connect(w, std::chrono::seconds(30));
        Params p;
        body(r, *group, p);
        if (::testing::Test::HasFailure()) status = 1;
      } catch (const std::exception& e) {
        std::cerr << "rank " << r << ": " << e.what() << '\n';
        status = 2;
      }
      std::cout.flush();
      std::cerr.flush();
      _exit(status);
    }
    ranks.push_back(pid);
  }
  for (size_t r = 0; r < ranks.size(); ++r) {
    int status = 0;
    ASSERT_EQ(waitpid(ranks[r], &status, 0), ranks[r]);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank " << r << " failed (status " << status << ")";
  }
}

void expect_equal(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what << ": no gradient";
  EXPECT_TRUE(torch::equal(got, want)) << what << ": " << got << " instead of " << want;
}

class GradientSyncTest : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override {
    if (!has_gloo()) GTEST_SKIP() << "built without Gloo";
  }
};

// Rank 0's loss reaches a and b, rank 1's only a; neither reaches c. Every rank ends with the sums of a
// and b, and c keeps no gradient, as one process with both batches would leave it.
TEST_P(GradientSyncTest, SumsWhatAnyRankReachesAndLeavesTheRestWithout) {
  on_two_ranks([](int rank, Group& group, Params& p) {
    GradientSync sync(group, p.all(), GetParam());
    sync.begin_backward(true);
    auto loss = rank == 0 ? (p.a * 2).sum() + (p.b * p.b).sum() : (p.a * 3).sum();
    sync.prepare_backward(loss);
    loss.backward();
    sync.end_backward();
    expect_equal(p.a.grad(), torch::full({3}, 5.0F), "a");
    expect_equal(p.b.grad(), p.b.detach() * 2, "b (rank 0's only)");
    EXPECT_FALSE(p.c.grad().defined()) << "c, which no rank reached, got " << p.c.grad();
    // In one bucket the gradients are views of the one sum, not copies of it.
    if (GetParam() > 1000) {
      EXPECT_TRUE(p.a.grad().is_alias_of(p.b.grad()));
    }
  });
}

// A rank without a loss in the sync pass (its share of the batch was empty) only joins the sums.
TEST_P(GradientSyncTest, ARankWithoutALossJoinsTheSums) {
  on_two_ranks([](int rank, Group& group, Params& p) {
    GradientSync sync(group, p.all(), GetParam());
    sync.begin_backward(true);
    if (rank == 1) {
      auto loss = (p.c * 2).sum();
      sync.prepare_backward(loss);
      loss.backward();
    }
    sync.end_backward();
    expect_equal(p.c.grad(), torch::full({4}, 2.0F), "c");
    EXPECT_FALSE(p.a.grad().defined());
    EXPECT_FALSE(p.b.grad().defined());
  });
}

// A gradient accumulated in a micro-step is summed although the sync pass's graph does not reach it.
TEST_P(GradientSyncTest, GradientsOfEarlierMicroStepsAreSummed) {
  on_two_ranks([](int rank, Group& group, Params& p) {
    GradientSync sync(group, p.all(), GetParam());
    sync.begin_backward(false);
    if (rank == 0) (p.c * 3).sum().backward();
    sync.begin_backward(true);
    auto loss = (p.a * static_cast<float>(rank + 1)).sum();
    sync.prepare_backward(loss);
    loss.backward();
    sync.end_backward();
    expect_equal(p.a.grad(), torch::full({3}, 3.0F), "a");
    expect_equal(p.c.grad(), torch::full({4}, 3.0F), "c (rank 0's micro-step)");
    EXPECT_FALSE(p.b.grad().defined());
  });
}

// A function that uses a parameter without declaring it as an input (reentrant checkpointing's form)
// hides it from the graph: its gradient would arrive after its bucket was sent without it. That is an
// error, not a silently dropped gradient.
struct HidesC : public torch::autograd::Function<HidesC> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t c) {
    ctx->saved_data["c"] = c;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    const auto& c = *reinterpret_cast<const torch::Tensor*>(ctx->saved_data["c"].toInt());
    torch::AutoGradMode on(true);
    (c * 1).sum().backward();
    return {g[0], torch::Tensor()};
  }
};

TEST_P(GradientSyncTest, AGradientBehindAutogradsBackIsAnError) {
  on_two_ranks([](int, Group& group, Params& p) {
    GradientSync sync(group, p.all(), GetParam(), {}, {"a", "b", "c"});
    sync.begin_backward(true);
    auto loss = HidesC::apply(p.a, reinterpret_cast<int64_t>(&p.c)).sum();
    sync.prepare_backward(loss);
    try {
      loss.backward();
      ADD_FAILURE() << "no error";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("c got a gradient although the autograd graph did not reach it from the loss"),
                std::string::npos)
          << e.what();
    }
  });
}

// ZeRO 2: each bucket is summed on its owner alone and the other ranks keep no gradient of it. Eight
// tensors of alternating owners, a bucket each: every rank has four buckets it does not own, more than it
// keeps in flight, so it waits for the oldest inside the backward pass.
TEST(GradientSyncOwners, EachOwnerGetsItsSumsAndTheOthersNone) {
  if (!has_gloo()) GTEST_SKIP() << "built without Gloo";
  on_two_ranks([](int rank, Group& group, Params&) {
    std::vector<torch::Tensor> params;
    std::vector<int> owners;
    for (int i = 0; i < 8; ++i) {
      params.push_back(torch::full({1000}, static_cast<float>(i + 1)).requires_grad_(true));
      owners.push_back(i % 2);
    }
    GradientSync sync(group, params, 1, owners);
    sync.begin_backward(true);
    auto loss = torch::zeros({}, torch::kFloat32);
    for (auto& p : params) loss = loss + (p * p).sum() * static_cast<float>(rank + 1);
    sync.prepare_backward(loss);
    loss.backward();
    sync.end_backward();
    for (size_t i = 0; i < params.size(); ++i) {
      if (owners[i] == rank) {
        expect_equal(params[i].grad(), params[i].detach() * 6, "tensor " + std::to_string(i));  // 2p + 4p
      } else {
        EXPECT_FALSE(params[i].grad().defined()) << "rank " << rank << " kept tensor " << i << "'s gradient";
      }
    }
    // Its own four tensors' sums and at most two buckets of the others' at once: 6 x 4000 bytes, not 8.
    EXPECT_GE(sync.peak_bucket_bytes(), 4 * 4000);
    EXPECT_LE(sync.peak_bucket_bytes(), 6 * 4000);
  });
}

// One bucket for all three tensors, and one bucket each.
INSTANTIATE_TEST_SUITE_P(Buckets, GradientSyncTest, ::testing::Values(int64_t{1} << 20, int64_t{1}));

}  // namespace
}  // namespace lego::dist
