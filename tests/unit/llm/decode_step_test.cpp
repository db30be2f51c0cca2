// DecodeStep: the static form a CUDA graph replays gives the plain decoder's logits, padded rows included;
// and the checkpointed forward gives the plain forward's gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "lego/llm/decode_step.h"
#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"

namespace lego::llm {
namespace {

LlamaForCausalLM make_model() {
  LlamaForCausalLM m(LlamaOptions(97, 32, 64, 2, 4).num_kv_heads(2).max_position(64));
  nn::init_normal(*m, 0.2, 5);
  m->eval();
  return m;
}

// Prefills a left-padded batch of two rows, then decodes `steps` tokens greedily in `mode`; returns the
// logits of every step, stacked [steps, B, vocab].
torch::Tensor decode(LlamaForCausalLM& m, DecodeMode mode, int64_t steps) {
  torch::NoGradGuard ng;
  auto ids = torch::randint(3, 97, {2, 7}, torch::TensorOptions().dtype(torch::kInt64));
  auto valid = torch::ones({2, 7}, torch::kBool);
  valid[0].narrow(0, 0, 3).fill_(false);
  const int64_t capacity = 7 + steps;
  KvCache cache(m->options(), 2, capacity, torch::kFloat32);
  auto key_valid = torch::ones({2, capacity}, torch::kBool);
  key_valid.narrow(1, 0, 7).copy_(valid);
  AttentionContext ctx;
  ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
  ctx.key_valid = key_valid;
  ctx.cache = &cache;
  auto logits = m->forward(m->model->embed(ids), ctx).select(1, 6);
  auto next_pos = valid.to(torch::kInt64).sum(1);
  DecodeStep decoder(m, cache, key_valid, mode);
  std::vector<torch::Tensor> out;
  for (int64_t t = 0; t < steps; ++t) {
    auto next = logits.argmax(1);
    logits = decoder.step(next, next_pos + t).clone();
    out.push_back(logits);
  }
  EXPECT_EQ(cache.length(), capacity);
  return torch::stack(out);
}

TEST(DecodeStep, StaticFormEqualsThePlainDecoder) {
  auto m = make_model();
  torch::manual_seed(3);
  auto dynamic = decode(m, DecodeMode::Dynamic, 6);
  torch::manual_seed(3);
  auto fixed = decode(m, DecodeMode::Static, 6);
  // The static form runs on fused projections (views of one tensor per layer): still the same parameters.
  EXPECT_TRUE(m->model->layers->at<LlamaDecoderLayerImpl>(0).self_attn->fused());
  EXPECT_TRUE(m->model->layers->at<LlamaDecoderLayerImpl>(1).mlp->fused());
  EXPECT_EQ(m->parameters().size(), make_model()->parameters().size());
  EXPECT_FALSE(fixed.isnan().any().item<bool>());
  EXPECT_LT((dynamic - fixed).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(torch::equal(dynamic.argmax(2), fixed.argmax(2)));
}

// Prefills `ids` [1, T] into `cache` and decodes `steps` greedy tokens with `decoder`; the step logits.
torch::Tensor continue_greedy(LlamaForCausalLM& m, KvCache& cache, DecodeStep& decoder, const torch::Tensor& ids,
                              int64_t steps) {
  torch::NoGradGuard ng;
  const int64_t len = ids.size(1);
  AttentionContext ctx;
  ctx.positions = torch::arange(len).unsqueeze(0);
  ctx.cache = &cache;
  auto logits = m->forward(m->model->embed(ids), ctx).select(1, len - 1);
  std::vector<torch::Tensor> out;
  for (int64_t t = 0; t < steps; ++t) {
    logits = decoder.step(logits.argmax(1), torch::full({1}, len + t, torch::kInt64)).clone();
    out.push_back(logits);
  }
  return torch::stack(out);
}

// What the generator does between two calls on CUDA: one decoder, and its cache cleared for the next
// sequence, keep every buffer a captured graph reads. Stale slots, even non-finite ones, must not leak.
TEST(DecodeStep, ServesTheNextSequenceAfterItsCacheIsCleared) {
  auto m = make_model();
  torch::manual_seed(4);
  const int64_t capacity = 24;
  KvCache cache(m->options(), 1, capacity, torch::kFloat32);
  DecodeStep decoder(m, cache, torch::Tensor(), DecodeMode::Static);
  const auto keys = cache.layer_keys(0);
  const auto* address = keys.data_ptr();
  (void)continue_greedy(m, cache, decoder, torch::randint(3, 97, {1, 9}, torch::kInt64), 10);
  for (int64_t l = 0; l < m->options().num_layers(); ++l) {
    cache.layer_keys(l).narrow(2, 19, capacity - 19).fill_(std::nan(""));
    cache.layer_values(l).narrow(2, 19, capacity - 19).fill_(std::nan(""));
  }
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.layer_keys(0).data_ptr(), address);
  for (int64_t l = 0; l < m->options().num_layers(); ++l) {
    EXPECT_EQ(cache.layer_keys(l).count_nonzero().item<int64_t>(), 0) << "layer " << l;
    EXPECT_EQ(cache.layer_values(l).count_nonzero().item<int64_t>(), 0) << "layer " << l;
  }
  const auto other = torch::randint(3, 97, {1, 5}, torch::kInt64);
  auto reused = continue_greedy(m, cache, decoder, other, 12);
  KvCache fresh_cache(m->options(), 1, capacity, torch::kFloat32);
  DecodeStep fresh(m, fresh_cache, torch::Tensor(), DecodeMode::Static);
  auto first = continue_greedy(m, fresh_cache, fresh, other, 12);
  EXPECT_FALSE(reused.isnan().any().item<bool>());
  EXPECT_TRUE(torch::equal(reused, first));
}

TEST(DecodeStep, RefusesAFullCacheAndAnIdOutsideTheVocabulary) {
  torch::NoGradGuard ng;
  auto m = make_model();
  KvCache cache(m->options(), 1, 2, torch::kFloat32);
  DecodeStep decoder(m, cache, torch::Tensor(), DecodeMode::Static);
  const auto pos = torch::zeros({1}, torch::kInt64);
  EXPECT_THROW(decoder.step(torch::full({1}, 97, torch::kInt64), pos), Error);
  EXPECT_THROW(decoder.step(torch::full({1}, -1, torch::kInt64), pos), Error);
  EXPECT_EQ(cache.length(), 0);
  decoder.step(torch::full({1}, 5, torch::kInt64), pos);
  decoder.step(torch::full({1}, 6, torch::kInt64), pos + 1);
  EXPECT_THROW(decoder.step(torch::full({1}, 7, torch::kInt64), pos + 2), Error);
}

TEST(DecodeStep, GraphModeIsRefusedWithoutCuda) {
  if (DecodeStep::graphs_available(torch::Device(torch::kCUDA, 0))) GTEST_SKIP() << "this machine has CUDA";
  auto m = make_model();
  KvCache cache(m->options(), 1, 4, torch::kFloat32);
  EXPECT_THROW(DecodeStep(m, cache, torch::Tensor(), DecodeMode::Graph), Error);
}

TEST(Llama, CheckpointedForwardGivesThePlainGradients) {
  auto m = make_model();
  m->train();
  auto ids = torch::randint(0, 97, {2, 9}, torch::kInt64);
  AttentionContext ctx;
  ctx.positions = torch::arange(9).unsqueeze(0).expand({2, 9});
  auto grads = [&](bool checkpointed) {
    m->zero_grad();
    auto embeds = m->model->embed(ids);
    const auto in = m->model->prepare(ctx, 9, embeds.scalar_type());
    auto hidden = checkpointed ? m->model->forward_checkpointed(embeds, ctx, in) : m->model->forward(embeds, ctx);
    m->logits(hidden).square().mean().backward();
    std::vector<torch::Tensor> g;
    for (auto& p : m->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  const auto plain = grads(false);
  const auto checkpointed = grads(true);
  ASSERT_EQ(plain.size(), checkpointed.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_GT(plain[i].abs().max().item<double>(), 0.0) << "parameter " << i << " got no gradient";
    EXPECT_LT((plain[i] - checkpointed[i]).abs().max().item<double>(), 1e-6) << "parameter " << i;
  }
}

}  // namespace
}  // namespace lego::llm
