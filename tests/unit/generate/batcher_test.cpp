// Continuous batching: every sequence's output equals Generator's for it alone, however sequences join and
// leave; per-row sampling settings, cancel, and refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <optional>

#include "lego/generate/batcher.h"
#include "lego/model/language_model.h"
#include "tiny_model.h"

namespace lego::generate {
namespace {

using lego::testing::expect_error;

LanguageModel& tiny() {
  static LanguageModel m = LanguageModel::load(lego::testing::tiny_model_dir());
  return m;
}

struct Outcome {
  std::optional<GenerationOutput> output;
  std::string streamed;
  int done_calls = 0;
};

Sequence sequence_of(const std::vector<int64_t>& ids, const SamplingOptions& o, Outcome& out) {
  auto& m = tiny();
  torch::NoGradGuard no_grad;
  Sequence s;
  s.embeds = m.net->model->embed(torch::tensor(ids, torch::kInt64).view({1, -1}));
  s.prompt_ids = ids;
  s.options = o;
  s.on_text = [&out](std::string_view t) { out.streamed += t; };
  s.on_done = [&out](GenerationOutput g, std::exception_ptr e) {
    ++out.done_calls;
    if (!e) out.output = std::move(g);
  };
  return s;
}

GenerationOutput alone(const std::vector<int64_t>& ids, const SamplingOptions& o) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  return g.generate({ids}, o).front();
}

// Each sequence ended once, with the ids, text, finish reason and stream of its answer alone.
void expect_each_alone(const std::vector<std::string>& prompts, const std::vector<SamplingOptions>& options,
                       const std::vector<Outcome>& outcomes) {
  auto& m = tiny();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    ASSERT_EQ(outcomes[i].done_calls, 1);
    ASSERT_TRUE(outcomes[i].output.has_value());
    const auto expected = alone(m.tokenizer->encode(prompts[i]), options[i]);
    EXPECT_EQ(outcomes[i].output->token_ids, expected.token_ids);
    EXPECT_EQ(outcomes[i].output->text, expected.text);
    EXPECT_EQ(outcomes[i].output->finish_reason, expected.finish_reason);
    EXPECT_EQ(outcomes[i].streamed, expected.text);
  }
}

std::vector<SamplingOptions> mixed_options() {
  std::vector<SamplingOptions> v(4);
  v[0].max_new_tokens = 20;
  v[0].stop_at_eos = false;
  v[1].max_new_tokens = 7;
  v[1].temperature = 1.3;
  v[1].seed = 11;
  v[1].stop_at_eos = false;
  v[2].max_new_tokens = 15;
  v[2].temperature = 0.9;
  v[2].top_k = 20;
  v[2].top_p = 0.8;
  v[2].repetition_penalty = 1.3;
  v[2].seed = 5;
  v[3].max_new_tokens = 11;
  v[3].repetition_penalty = 1.2;
  v[3].stop_at_eos = false;
  return v;
}

TEST(ContinuousBatcher, EachSequenceEqualsItsAnswerAloneWhileOthersJoinAndLeave) {
  auto& m = tiny();
  const std::vector<std::string> prompts = {"The dog", "Where does the sound of the bell come from in this video?",
                                            "A red ball", "Describe the picture in detail please"};
  const auto options = mixed_options();
  ContinuousBatcher batcher(m.net, m.tokenizer, 3);
  std::vector<Outcome> outcomes(prompts.size());
  // Sequences 0 and 1 start together (prefilled in one left-padded forward); 2 joins after 3 steps, 3 when a
  // row is free (after 1 leaves at 7).
  std::vector<Sequence> first;
  first.push_back(sequence_of(m.tokenizer->encode(prompts[0]), options[0], outcomes[0]));
  first.push_back(sequence_of(m.tokenizer->encode(prompts[1]), options[1], outcomes[1]));
  EXPECT_EQ(batcher.add_all(std::move(first)).size(), 2u);
  size_t next = 2;
  for (int step = 0; step < 200 && (!batcher.empty() || next < prompts.size()); ++step) {
    if (step >= 3 && next < prompts.size() && !batcher.full()) {
      batcher.add(sequence_of(m.tokenizer->encode(prompts[next]), options[next], outcomes[next]));
      ++next;
    }
    batcher.step();
  }
  ASSERT_TRUE(batcher.empty());
  // 0 and 1 make the cache (with a spare row); 2 takes the spare row, 3 the row 1 left.
  EXPECT_EQ(batcher.stats().rebuilds, 1);
  EXPECT_EQ(batcher.stats().placements, 2);
  expect_each_alone(prompts, options, outcomes);
}

// Joins that fit take free rows; a longer prompt than the cache holds, a full cache and a mostly free cache
// each rebuild it. Every sequence still equals its answer alone.
TEST(ContinuousBatcher, FreeRowsAreReusedAndTheCacheRebuiltWhenAJoinDoesNotFit) {
  auto& m = tiny();
  const std::vector<std::string> prompts = {
      "The dog", "A red ball", "A cat", "The bell rings",  // together first: the common length is theirs
      "Where does the sound of the bell come from in this long video of a street?",  // longer: a rebuild
      "A dog", "Red", "The ball", "A bell"};
  ContinuousBatcher batcher(m.net, m.tokenizer, 8);
  std::vector<Outcome> outcomes(prompts.size());
  std::vector<SamplingOptions> options(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    options[i].max_new_tokens = 4 + static_cast<int64_t>(i % 4) * 3;  // leave at different steps
    options[i].stop_at_eos = false;
    options[i].temperature = i % 2 ? 0.8 : 0.0;
    options[i].seed = 100 + i;
  }
  std::vector<Sequence> first;
  for (size_t i = 0; i < 4; ++i) first.push_back(sequence_of(m.tokenizer->encode(prompts[i]), options[i], outcomes[i]));
  batcher.add_all(std::move(first));
  batcher.step();  // the first rebuild: 4 rows and 2 spare
  EXPECT_EQ(batcher.stats().rebuilds, 1);
  batcher.step();
  batcher.add(sequence_of(m.tokenizer->encode(prompts[4]), options[4], outcomes[4]));
  batcher.step();  // its prompt is longer than the common length
  EXPECT_EQ(batcher.stats().rebuilds, 2);
  const auto placed = batcher.stats().placements;
  batcher.add(sequence_of(m.tokenizer->encode(prompts[5]), options[5], outcomes[5]));
  batcher.step();  // short: a spare row
  EXPECT_EQ(batcher.stats().rebuilds, 2);
  EXPECT_EQ(batcher.stats().placements, placed + 1);
  size_t next = 6;
  for (int step = 0; step < 200 && (!batcher.empty() || next < prompts.size()); ++step) {
    if (step % 5 == 4 && next < prompts.size() && !batcher.full()) {
      batcher.add(sequence_of(m.tokenizer->encode(prompts[next]), options[next], outcomes[next]));
      ++next;
    }
    batcher.step();
  }
  ASSERT_TRUE(batcher.empty());
  EXPECT_GE(batcher.stats().placements, placed + 2);
  EXPECT_GE(batcher.stats().rebuilds, 3);  // the last rows alone in a cache of 7 rows: it shrinks
  expect_each_alone(prompts, options, outcomes);
}

TEST(ContinuousBatcher, StopStringsEndOneRowOnly) {
  auto& m = tiny();
  SamplingOptions free_run;
  free_run.max_new_tokens = 16;
  free_run.stop_at_eos = false;
  const auto ids = m.tokenizer->encode("The dog");
  const auto whole = alone(ids, free_run);
  ASSERT_GE(whole.text.size(), 4u);
  SamplingOptions stopped = free_run;
  stopped.stop = {whole.text.substr(2, 2)};
  ContinuousBatcher batcher(m.net, m.tokenizer, 2);
  Outcome a, b;
  batcher.add(sequence_of(ids, stopped, a));
  batcher.add(sequence_of(ids, free_run, b));
  while (!batcher.empty()) batcher.step();
  ASSERT_TRUE(a.output && b.output);
  EXPECT_EQ(a.output->finish_reason, "stop");
  EXPECT_EQ(a.output->text, alone(ids, stopped).text);
  EXPECT_EQ(b.output->text, whole.text);
}

TEST(ContinuousBatcher, CancelDropsARowWithoutCallingItsEnd) {
  auto& m = tiny();
  SamplingOptions o;
  o.max_new_tokens = 10;
  o.stop_at_eos = false;
  ContinuousBatcher batcher(m.net, m.tokenizer, 2);
  Outcome a, b;
  const auto ida = batcher.add(sequence_of(m.tokenizer->encode("The dog"), o, a));
  batcher.add(sequence_of(m.tokenizer->encode("A red ball"), o, b));
  batcher.step();
  EXPECT_TRUE(batcher.cancel(ida));
  EXPECT_FALSE(batcher.cancel(ida));
  while (!batcher.empty()) batcher.step();
  EXPECT_EQ(a.done_calls, 0);
  ASSERT_TRUE(b.output);
  EXPECT_EQ(b.output->token_ids, alone(m.tokenizer->encode("A red ball"), o).token_ids);
}

TEST(ContinuousBatcher, RefusesBadSequencesBeforeChangingAnything) {
  auto& m = tiny();
  SamplingOptions o;
  ContinuousBatcher batcher(m.net, m.tokenizer, 1);
  Outcome out;
  auto s = sequence_of(m.tokenizer->encode("The dog"), o, out);
  s.prompt_ids.pop_back();
  expect_error([&] { batcher.add(s); }, ErrorKind::InvalidArgument, {"prompt ids"});
  auto bad = sequence_of(m.tokenizer->encode("The dog"), o, out);
  bad.options.top_p = 0;
  expect_error([&] { batcher.add(bad); }, ErrorKind::InvalidArgument, {"top_p"});
  auto too_long = sequence_of(std::vector<int64_t>(m.net->options().max_position() + 1, 5), o, out);
  expect_error([&] { batcher.add(too_long); }, ErrorKind::InvalidArgument, {"context"});
  EXPECT_TRUE(batcher.empty());
  batcher.add(sequence_of(m.tokenizer->encode("The dog"), o, out));
  expect_error([&] { batcher.add(sequence_of(m.tokenizer->encode("A"), o, out)); }, ErrorKind::InvalidArgument, {"full"});
  expect_error([&] { ContinuousBatcher(m.net, m.tokenizer, 0); }, ErrorKind::InvalidArgument, {"max_batch"});
}

TEST(ContinuousBatcher, ZeroNewTokensEndsAtOnce) {
  auto& m = tiny();
  SamplingOptions o;
  o.max_new_tokens = 0;
  ContinuousBatcher batcher(m.net, m.tokenizer, 1);
  Outcome out;
  batcher.add(sequence_of(m.tokenizer->encode("The dog"), o, out));
  batcher.step();
  EXPECT_TRUE(batcher.empty());
  ASSERT_TRUE(out.output);
  EXPECT_TRUE(out.output->token_ids.empty());
  EXPECT_EQ(out.output->finish_reason, "length");
}

}  // namespace
}  // namespace lego::generate
