// The decoder's cached, batched and padded paths agree with its plain full-sequence forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lego/llm/llama.h"
#include "lego/sdk/nn/linear.h"
#include "test_files.h"

namespace lego::llm {
namespace {

LlamaOptions tiny() {
  return LlamaOptions(97, 32, 64, 2, 4).num_kv_heads(2).max_position(64);
}

LlamaForCausalLM make_model(const LlamaOptions& o) {
  LlamaForCausalLM m(o);
  nn::init_normal(*m, 0.2, 5);
  m->eval();
  return m;
}

torch::Tensor full_logits(LlamaForCausalLM& m, const torch::Tensor& ids) {
  AttentionContext ctx;
  ctx.positions = torch::arange(ids.size(1)).unsqueeze(0).expand({ids.size(0), -1});
  return m->forward(m->model->embed(ids), ctx);
}

TEST(Llama, IncrementalDecodingMatchesFullForward) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  auto ids = torch::randint(0, 97, {1, 12}, torch::kInt64);
  auto full = full_logits(m, ids);
  KvCache cache(m->options(), 1, 12, torch::kFloat32);
  AttentionContext ctx;
  ctx.cache = &cache;
  ctx.positions = torch::arange(8).unsqueeze(0);
  auto prefix = m->forward(m->model->embed(ids.narrow(1, 0, 8)), ctx);
  EXPECT_TRUE(torch::allclose(prefix, full.narrow(1, 0, 8), 1e-5, 1e-5));
  for (int64_t t = 8; t < 12; ++t) {
    ctx.positions = torch::full({1, 1}, t, torch::kInt64);
    auto step = m->forward(m->model->embed(ids.narrow(1, t, 1)), ctx);
    EXPECT_TRUE(torch::allclose(step.squeeze(1), full.select(1, t), 1e-5, 1e-5)) << "position " << t;
  }
  EXPECT_EQ(cache.length(), 12);
}

TEST(Llama, LeftPaddedRowMatchesTheSameRowAlone) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  auto short_ids = torch::randint(3, 97, {1, 5}, torch::kInt64);
  auto long_ids = torch::randint(3, 97, {1, 9}, torch::kInt64);
  auto batch = torch::zeros({2, 9}, torch::kInt64);
  batch[0].narrow(0, 4, 5).copy_(short_ids[0]);
  batch[1].copy_(long_ids[0]);
  auto valid = torch::ones({2, 9}, torch::kBool);
  valid[0].narrow(0, 0, 4).fill_(false);
  AttentionContext ctx;
  ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
  ctx.key_valid = valid;
  auto out = m->forward(m->model->embed(batch), ctx);
  EXPECT_FALSE(out.isnan().any().item<bool>()) << "padding rows must stay finite";
  EXPECT_TRUE(torch::allclose(out[0].narrow(0, 4, 5), full_logits(m, short_ids)[0], 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(out[1], full_logits(m, long_ids)[0], 1e-5, 1e-5));
}

TEST(Llama, GroupedQueryAttentionEqualsMultiHeadWithRepeatedKeys) {
  torch::NoGradGuard ng;
  auto gqa = make_model(tiny());
  auto mha = make_model(LlamaOptions(97, 32, 64, 2, 4).num_kv_heads(4).max_position(64));
  auto src = gqa->named_parameters();
  for (auto& p : mha->named_parameters()) {
    const auto& w = src[p.key()];
    if (p.key().find("k_proj") != std::string::npos || p.key().find("v_proj") != std::string::npos) {
      // kv head h serves query heads 2h and 2h+1: repeat each head's rows twice.
      p.value().copy_(w.view({2, 1, 8, 32}).expand({2, 2, 8, 32}).reshape({32, 32}));
    } else {
      p.value().copy_(w);
    }
  }
  auto ids = torch::randint(0, 97, {2, 7}, torch::kInt64);
  EXPECT_TRUE(torch::allclose(full_logits(gqa, ids), full_logits(mha, ids), 1e-5, 1e-5));
}

TEST(Llama, SequenceLongerThanTheContextIsRefused) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  auto ids = torch::zeros({1, 65}, torch::kInt64);
  lego::testing::expect_error([&] { full_logits(m, ids); }, ErrorKind::InvalidArgument, {"65", "context of 64"});
}

TEST(Llama, KvCacheOverflowIsRefused) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  KvCache cache(m->options(), 1, 4, torch::kFloat32);
  AttentionContext ctx;
  ctx.cache = &cache;
  ctx.positions = torch::arange(5).unsqueeze(0);
  lego::testing::expect_error([&] { m->forward(m->model->embed(torch::zeros({1, 5}, torch::kInt64)), ctx); },
                              ErrorKind::InvalidArgument, {"capacity of 4"});
}

// gather() right-aligns rows to a common length, leaving spare rows and front room when asked; place()
// puts a row into a free row of an existing cache the same way. Each row decodes on as it would alone.
TEST(Llama, KvCacheGatherAndPlaceRightAlignRows) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  const auto o = m->options();
  // Two sources: a 5-token and a 3-token prompt, each prefilled alone.
  std::vector<torch::Tensor> ids = {torch::randint(0, 97, {1, 5}, torch::kInt64), torch::randint(0, 97, {1, 3}, torch::kInt64)};
  std::vector<std::unique_ptr<KvCache>> sources;
  for (const auto& t : ids) {
    sources.push_back(std::make_unique<KvCache>(o, 1, t.size(1), torch::kFloat32));
    AttentionContext ctx;
    ctx.cache = sources.back().get();
    ctx.positions = torch::arange(t.size(1)).unsqueeze(0);
    m->forward(m->model->embed(t), ctx);
  }
  // Row 0 from the 5-token source, at a common length of 7 in a cache of 3 rows; then the 3-token one placed
  // into row 2.
  auto cache = KvCache::gather({{sources[0].get(), 0, 5}}, 10, 3, 7);
  EXPECT_EQ(cache.batch(), 3);
  EXPECT_EQ(cache.length(), 7);
  EXPECT_EQ(cache.capacity(), 10);
  cache.place(2, {sources[1].get(), 0, 3});
  EXPECT_TRUE(torch::equal(cache.layer_keys(1)[0].narrow(1, 2, 5), sources[0]->layer_keys(1)[0]));
  EXPECT_TRUE(torch::equal(cache.layer_values(1)[2].narrow(1, 4, 3), sources[1]->layer_values(1)[0]));
  EXPECT_EQ(cache.layer_keys(0)[1].abs().sum().item<float>(), 0.0f);  // the spare row stays zero
  // One more token for each row, against the same token after each prompt alone.
  auto next = torch::randint(0, 97, {2, 1}, torch::kInt64);
  auto valid = torch::ones({3, 10}, torch::kBool);
  valid[0].narrow(0, 0, 2).fill_(false);
  valid[2].narrow(0, 0, 4).fill_(false);
  AttentionContext ctx;
  ctx.cache = &cache;
  ctx.key_valid = valid;
  ctx.positions = torch::tensor({5, 0, 3}, torch::kInt64).view({3, 1});
  auto together = m->forward(m->model->embed(torch::stack({next[0], torch::zeros({1}, torch::kInt64), next[1]})), ctx);
  for (int64_t r = 0; r < 2; ++r) {
    auto alone = full_logits(m, torch::cat({ids[r], next[r].view({1, 1})}, 1));
    EXPECT_TRUE(torch::allclose(together[r == 0 ? 0 : 2], alone[0].narrow(0, ids[r].size(1), 1), 1e-5, 1e-5)) << "row " << r;
  }
  // Refusals: a length below the rows, a batch below them, a length past the capacity, a row that does
  // not fit in front of the length, a row out of range.
  using lego::testing::expect_error;
  expect_error([&] { KvCache::gather({{sources[0].get(), 0, 5}}, 10, 1, 4); }, ErrorKind::InvalidArgument, {"cannot hold"});
  expect_error([&] { KvCache::gather({{sources[0].get(), 0, 5}, {sources[1].get(), 0, 3}}, 10, 1); }, ErrorKind::InvalidArgument,
               {"cannot hold"});
  expect_error([&] { KvCache::gather({{sources[0].get(), 0, 5}}, 6, 1, 7); }, ErrorKind::InvalidArgument, {"capacity of 6"});
  auto small = KvCache::gather({{sources[1].get(), 0, 3}}, 8, 2);
  expect_error([&] { small.place(1, {sources[0].get(), 0, 5}); }, ErrorKind::InvalidArgument, {"do not fit"});
  expect_error([&] { small.place(2, {sources[1].get(), 0, 3}); }, ErrorKind::InvalidArgument, {"do not fit"});
  expect_error([&] { small.place(0, {sources[1].get(), 1, 3}); }, ErrorKind::InvalidArgument, {"do not fit"});
}

TEST(Llama, InconsistentOptionsAreRefused) {
  lego::testing::expect_error([] { LlamaOptions(10, 30, 8, 1, 4).validate(); }, ErrorKind::InvalidArgument,
                              {"hidden_size (30)", "num_heads (4)"});
  lego::testing::expect_error([] { LlamaOptions(10, 32, 8, 1, 4).num_kv_heads(3).validate(); },
                              ErrorKind::InvalidArgument, {"num_kv_heads (3)"});
}

TEST(Llama, TokenIdOutsideTheVocabularyIsRefused) {
  torch::NoGradGuard ng;
  auto m = make_model(tiny());
  lego::testing::expect_error([&] { m->model->embed(torch::tensor({{5, 97}}, torch::kInt64)); },
                              ErrorKind::InvalidArgument, {"97"});
}

TEST(Llama, LinearRopeScalingDividesPositions) {
  torch::NoGradGuard ng;
  auto scaled = make_model(LlamaOptions(97, 32, 64, 2, 4).num_kv_heads(2).max_position(64).rope_scaling_factor(2.0));
  auto plain = make_model(tiny());
  auto q = torch::randn({1, 4, 1, 8});
  auto [cs, ss] = scaled->model->rotary_emb->tables(torch::full({1, 1}, 6, torch::kInt64), torch::kFloat32, 7);
  auto [cp, sp] = plain->model->rotary_emb->tables(torch::full({1, 1}, 3, torch::kInt64), torch::kFloat32, 4);
  EXPECT_TRUE(torch::allclose(RotaryEmbeddingImpl::rotate(q, cs, ss), RotaryEmbeddingImpl::rotate(q, cp, sp), 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(RotaryEmbeddingImpl::rotate(q, cs, ss), q, 1e-3, 1e-3));
}

}  // namespace
}  // namespace lego::llm

namespace lego::llm {
namespace {

TEST(Llama, RotaryTablesCoverOnlyThePositionsUsed) {
  // A 10-million-position context used to build 10M x D tables (2.4 GB) for an 8-token prompt.
  torch::NoGradGuard ng;
  auto m = make_model(LlamaOptions(97, 32, 64, 2, 4).num_kv_heads(2).max_position(10'000'000));
  AttentionContext ctx;
  ctx.positions = torch::arange(8, torch::kInt64).unsqueeze(0);
  auto out = m->forward(m->model->embed(torch::tensor({{1, 5, 7, 9, 11, 13, 15, 17}}, torch::kInt64)), ctx);
  EXPECT_EQ(out.size(1), 8);
  EXPECT_LE(m->model->rotary_emb->built(), 256);
  // Growing the table keeps every earlier entry bit for bit.
  auto before = m->model->rotary_emb->tables(torch::tensor({{3, 200}}, torch::kInt64), torch::kFloat32, 201);
  m->model->rotary_emb->tables(torch::tensor({{5000}}, torch::kInt64), torch::kFloat32, 5001);
  EXPECT_GE(m->model->rotary_emb->built(), 5001);
  auto after = m->model->rotary_emb->tables(torch::tensor({{3, 200}}, torch::kInt64), torch::kFloat32, 201);
  EXPECT_TRUE(torch::equal(before.first, after.first));
  EXPECT_TRUE(torch::equal(before.second, after.second));
}

TEST(Llama, SizesBeyondTheMachineAreRefusedBeforeAllocating) {
  // hidden_size = 2^32 aborted the process inside the allocator.
  lego::testing::expect_error([] { LlamaOptions(32000, int64_t{1} << 32, 11008, 32, 32).validate(); },
                              ErrorKind::InvalidArgument, {"GiB", "memory"});
  lego::testing::expect_error(
      [] {
        KvCache(LlamaOptions(97, 32, 64, 2, 4), 1'000'000, 1'000'000'000, torch::TensorOptions(torch::kFloat32));
      },
      ErrorKind::InvalidArgument, {"key/value cache", "GiB"});
}

}  // namespace
}  // namespace lego::llm
