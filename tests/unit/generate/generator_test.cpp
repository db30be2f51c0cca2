// Generation: logit processing, seeds, stop strings, streaming and context limits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>

#include "lego/generate/generator.h"
#include "lego/model/language_model.h"
#include "tiny_model.h"

namespace lego::generate {
namespace {

using lego::testing::expect_error;

LanguageModel& tiny() {
  static LanguageModel m = LanguageModel::load(lego::testing::tiny_model_dir());
  return m;
}

TEST(ProcessLogits, TopKKeepsExactlyKTokens) {
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 3;
  auto logits = torch::tensor({{1.0f, 5.0f, 3.0f, 4.0f, 2.0f}});
  auto out = process_logits(logits, torch::Tensor(), o);
  EXPECT_EQ(torch::isfinite(out).sum().item<int64_t>(), 3);
  EXPECT_TRUE(std::isinf(out[0][0].item<float>()));
}

TEST(ProcessLogits, TopPKeepsTheSmallestSetAboveTheMass) {
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.7;
  // probabilities 0.5, 0.3, 0.2: 0.5 alone is below 0.7, 0.5 + 0.3 reaches it.
  auto logits = torch::log(torch::tensor({{0.5f, 0.3f, 0.2f}}));
  auto out = process_logits(logits, torch::Tensor(), o);
  EXPECT_TRUE(std::isfinite(out[0][0].item<float>()));
  EXPECT_TRUE(std::isfinite(out[0][1].item<float>()));
  EXPECT_TRUE(std::isinf(out[0][2].item<float>()));
}

TEST(ProcessLogits, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingOptions o;
  o.repetition_penalty = 2.0;
  auto logits = torch::tensor({{4.0f, -4.0f, 1.0f}});
  auto out = process_logits(logits, torch::tensor({{0, 1}}, torch::kInt64), o);
  EXPECT_FLOAT_EQ(out[0][0].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(out[0][1].item<float>(), -8.0f);
  EXPECT_FLOAT_EQ(out[0][2].item<float>(), 1.0f);
}

TEST(Generator, SameSeedSameTextOtherSeedOtherText) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.temperature = 1.5;
  o.max_new_tokens = 24;
  o.stop_at_eos = false;
  const auto prompt = m.tokenizer->encode("The dog");
  o.seed = 1;
  auto a = g.generate({prompt}, o);
  auto b = g.generate({prompt}, o);
  o.seed = 2;
  auto c = g.generate({prompt}, o);
  EXPECT_EQ(a[0].token_ids, b[0].token_ids);
  EXPECT_NE(a[0].token_ids, c[0].token_ids);
}

TEST(Generator, BatchedGreedyEqualsOneByOne) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  const auto p1 = m.tokenizer->encode("Where does the sound of the bell come from?");
  const auto p2 = m.tokenizer->encode("A dog");
  auto batch = g.generate({p1, p2}, o);
  EXPECT_EQ(batch[0].token_ids, g.generate({p1}, o)[0].token_ids);
  EXPECT_EQ(batch[1].token_ids, g.generate({p2}, o)[0].token_ids);
}

TEST(Generator, StopStringCutsTheTextAndStreamingNeverShowsIt) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 40;
  o.stop_at_eos = false;
  const auto prompt = m.tokenizer->encode("The");
  auto free_run = g.generate({prompt}, o)[0];
  ASSERT_GE(free_run.text.size(), 6u);
  // Stop at a piece of the text the model is known to produce.
  o.stop = {free_run.text.substr(3, 3)};
  std::string streamed;
  auto stopped = g.generate({prompt}, o, [&](int64_t, std::string_view s) { streamed += s; })[0];
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.text, free_run.text.substr(0, free_run.text.find(o.stop[0])));
  EXPECT_EQ(streamed, stopped.text);
}

TEST(Generator, LengthAndContextLimitsAreReported) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 5;
  o.stop_at_eos = false;
  auto r = g.generate({m.tokenizer->encode("a")}, o)[0];
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.token_ids.size(), 5u);
  const int64_t context = m.options.max_position();
  std::vector<int64_t> near_full(context - 3, m.tokenizer->bos_id());
  o.max_new_tokens = 10;
  auto c = g.generate({near_full}, o)[0];
  EXPECT_EQ(c.finish_reason, "context");
  EXPECT_EQ(c.token_ids.size(), 3u);
}

TEST(Generator, PromptLongerThanTheContextIsRefused) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  std::vector<int64_t> too_long(m.options.max_position() + 1, 5);
  expect_error([&] { g.generate({too_long}, SamplingOptions{}); }, ErrorKind::InvalidArgument,
               {std::to_string(too_long.size()), "context"});
}

TEST(Generator, OwnsItsTokenizer) {
  auto& m = tiny();
  auto tok = std::make_shared<const text::Tokenizer>(tokenizer_from_model_dir(m.dir, m.config));
  const std::weak_ptr<const text::Tokenizer> watch = tok;
  auto g = std::make_unique<Generator>(m.net, tok);
  tok.reset();  // the caller's copy goes; the generator's stays
  ASSERT_FALSE(watch.expired());
  SamplingOptions o;
  o.max_new_tokens = 8;
  o.stop_at_eos = false;
  const auto r = g->generate({m.tokenizer->encode("The dog")}, o)[0];
  EXPECT_EQ(r.token_ids.size(), 8u);
  EXPECT_EQ(r.text, m.tokenizer->decode(r.token_ids));
  g.reset();
  EXPECT_TRUE(watch.expired());
  expect_error([&] { Generator(m.net, nullptr); }, ErrorKind::InvalidArgument, {"tokenizer"});
}

TEST(Generator, BadSamplingOptionsAreRefused) {
  SamplingOptions o;
  o.top_p = 0;
  expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"top_p"});
  o = {};
  o.temperature = -1;
  expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"temperature"});
}

}  // namespace
}  // namespace lego::generate
