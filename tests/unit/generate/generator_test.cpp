// Generation: logit processing, seeds, stop strings, streaming, context limits, incremental text.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>

#include "lego/generate/generator.h"
#include "lego/model/language_model.h"
#include "lego/text/incremental_decoder.h"
#include "scoped_env.h"
#include "tiny_model.h"

namespace lego::generate {
namespace {

using lego::testing::expect_error;
using lego::testing::ScopedEnv;

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

// Random ids that stress decoding: any id (bos/eos/pad, byte pieces, pieces, added tokens), UTF-8
// characters spelt in byte pieces (some cut short or stray), and pieces that start with a space.
std::vector<int64_t> stress_ids(const text::Tokenizer& tok, std::mt19937& rng, size_t n) {
  auto byte_id = [&](unsigned char b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    return tok.token_id(name);
  };
  std::vector<int64_t> spaced;  // pieces that start with "▁"
  for (int64_t id = 0; id < tok.vocab_size(); ++id) {
    if (tok.piece(id).starts_with("\xE2\x96\x81")) spaced.push_back(id);
  }
  const std::vector<std::string> spelt = {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                          "\xE6\x9D\xB1", "\xC3", "\xF0\x9F\x98", "\xE2\x82",
                                          "\x80", "\xFF", "A "};
  const auto& added = tok.added_tokens();
  std::vector<int64_t> ids;
  while (ids.size() < n) {
    const int kind = static_cast<int>(rng() % 8);
    if (kind <= 1) {
      ids.push_back(static_cast<int64_t>(rng() % tok.vocab_size()));
    } else if (kind <= 3) {
      for (unsigned char b : spelt[rng() % spelt.size()]) ids.push_back(byte_id(b));
    } else if (kind == 4) {
      ids.push_back(tok.token_id(added[rng() % added.size()]));
    } else if (kind == 5) {
      const int64_t special[] = {tok.bos_id(), tok.eos_id(), tok.pad_id()};
      ids.push_back(special[rng() % 3]);
    } else {
      ids.push_back(spaced[rng() % spaced.size()]);
    }
  }
  ids.resize(n);
  return ids;
}

TEST(IncrementalDecoder, OutputIsTheDecodedTextAtEveryLength) {
  const auto tok = tiny().tokenizer;
  std::mt19937 rng(7);
  int64_t bytes_held = 0;
  for (int seq = 0; seq < 300; ++seq) {
    const auto ids = stress_ids(*tok, rng, 48);
    text::IncrementalDecoder dec(tok);
    std::string out;
    for (size_t k = 0; k < ids.size(); ++k) {
      out += dec.push(ids[k]);
      const std::vector<int64_t> prefix(ids.begin(),
                                        ids.begin() + static_cast<std::ptrdiff_t>(k + 1));
      const auto pending = dec.pending_text();
      bytes_held += static_cast<int64_t>(pending.size());
      ASSERT_EQ(out + pending, tok->decode(prefix)) << "sequence " << seq << ", length " << k + 1;
    }
  }
  EXPECT_GT(bytes_held, 0);  // the sequences did hold unfinished characters back
}

TEST(IncrementalDecoder, SpaceOfTheFirstPieceIsDroppedOnlyAtTheStartOfARun) {
  const auto tok = tiny().tokenizer;
  const int64_t eos = tok->eos_id();
  const int64_t start = tok->token_id("<im_start>");
  const auto the = tok->encode("The", false);  // "▁The": its space shows except at a run start
  std::vector<int64_t> ids = the;
  for (auto extra : {eos, start, eos}) {
    ids.push_back(extra);
    ids.insert(ids.end(), the.begin(), the.end());
  }
  text::IncrementalDecoder dec(tok);
  std::string out;
  for (auto id : ids) out += dec.push(id);
  EXPECT_EQ(out + dec.pending_text(), tok->decode(ids));
  EXPECT_EQ(out, "The The<im_start>The The");
}

TEST(IncrementalDecoder, RefusesIdsOutsideTheVocabulary) {
  const auto tok = tiny().tokenizer;
  text::IncrementalDecoder dec(tok);
  expect_error([&] { dec.push(tok->vocab_size()); }, ErrorKind::InvalidArgument, {"outside"});
  expect_error([] { text::IncrementalDecoder none(nullptr); }, ErrorKind::InvalidArgument,
               {"tokenizer"});
}

TEST(Generator, StopStringsAcrossTokenBoundariesAreFoundAndNeverStreamed) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 40;
  o.stop_at_eos = false;
  const auto prompt = m.tokenizer->encode("The");
  const auto free_run = g.generate({prompt}, o)[0];
  const auto& text = free_run.text;
  ASSERT_EQ(text, m.tokenizer->decode(free_run.token_ids));
  int tried = 0;
  std::vector<int64_t> head;
  size_t boundary = 0;
  for (size_t k = 0; k + 1 < free_run.token_ids.size() && tried < 6; ++k) {
    head.push_back(free_run.token_ids[k]);
    const size_t b = m.tokenizer->decode(head).size();
    if (b == boundary || b < 2 || b + 2 > text.size()) continue;
    boundary = b;
    // Two bytes of one token's text and two of the next: no single new piece contains the stop.
    o.stop = {"\x01never", text.substr(b - 2, 4)};
    std::string streamed;
    const auto cut = text.substr(0, text.find(o.stop[1]));
    auto stopped = g.generate({prompt}, o, [&](int64_t, std::string_view s) {
      streamed += s;
      EXPECT_EQ(cut.compare(0, streamed.size(), streamed), 0) << "streamed, then cut: " << streamed;
    })[0];
    EXPECT_EQ(stopped.finish_reason, "stop") << "stop '" << o.stop[1] << "'";
    EXPECT_EQ(stopped.text, cut);
    EXPECT_EQ(streamed, cut);
    ++tried;
  }
  EXPECT_GE(tried, 3);
}

TEST(Generator, StreamedTextIsTheDecodedTextWithBytePieces) {
  auto& m = tiny();
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 48;
  o.temperature = 2.0;
  o.stop_at_eos = false;
  const std::vector<std::vector<int64_t>> prompts = {
      m.tokenizer->encode("The dog"), m.tokenizer->encode("A"), m.tokenizer->encode("<im_start>")};
  int64_t byte_pieces = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    o.seed = seed;
    std::vector<std::string> streamed(prompts.size());
    auto out =
        g.generate(prompts, o, [&](int64_t row, std::string_view s) { streamed[row] += s; });
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_EQ(out[i].finish_reason, "length");
      EXPECT_EQ(out[i].text, m.tokenizer->decode(out[i].token_ids))
          << "seed " << seed << ", row " << i;
      EXPECT_EQ(streamed[i], out[i].text) << "seed " << seed << ", row " << i;
      for (auto id : out[i].token_ids) byte_pieces += m.tokenizer->byte_value(id) >= 0;
    }
  }
  EXPECT_GT(byte_pieces, 0);
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

TEST(Generator, NonFiniteLogitsAreAnErrorNotAnEmptyAnswer) {
  auto m = LanguageModel::load(lego::testing::tiny_model_dir());
  {
    torch::NoGradGuard no_grad;
    m.net->lm_head->weight[3].fill_(std::nan(""));  // every position's logit of token 3 becomes NaN
  }
  Generator g(m.net, m.tokenizer);
  SamplingOptions greedy;
  greedy.max_new_tokens = 4;
  expect_error([&] { g.generate({m.tokenizer->encode("The dog")}, greedy); }, ErrorKind::Format,
               {"non-finite logits", "step 0"});
  SamplingOptions sampled = greedy;
  sampled.temperature = 0.7;
  expect_error([&] { g.generate({m.tokenizer->encode("The dog")}, sampled); }, ErrorKind::Format,
               {"non-finite logits"});
}

TEST(Generator, BadSamplingOptionsAreRefused) {
  SamplingOptions o;
  o.top_p = 0;
  expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"top_p"});
  o = {};
  o.temperature = -1;
  expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"temperature"});
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    o = {};
    o.temperature = bad;
    expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"temperature"});
    o = {};
    o.repetition_penalty = bad;
    expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"repetition_penalty"});
    o = {};
    o.top_p = bad;
    expect_error([&] { o.validate(); }, ErrorKind::InvalidArgument, {"top_p"});
  }
}

// One call of `g`: its outputs' ids, and whether it decoded over the cache kept from the call before.
struct Call {
  std::vector<std::vector<int64_t>> ids;
  bool kept = false;
};
Call call(Generator& g, const std::vector<std::vector<int64_t>>& prompts, const SamplingOptions& o) {
  GenerationTimings t;
  Call c;
  for (auto& out : g.generate(prompts, o, {}, &t)) c.ids.push_back(out.token_ids);
  c.kept = t.kept_decoding;
  return c;
}

// A prompt of exactly n ids: BOS, then the ids of a sentence over and over.
std::vector<int64_t> prompt_of(const text::Tokenizer& tok, size_t n) {
  const auto words = tok.encode("Where does the sound of the bell come from", /*add_bos=*/false);
  std::vector<int64_t> ids{tok.bos_id()};
  while (ids.size() < n) ids.push_back(words[(ids.size() - 1) % words.size()]);
  return ids;
}

// What runs on CUDA as a kept graph, run here in the graph's static form (LEGO_DECODE_FORM=static): one
// generator answers calls of other prompts, padding, batch sizes and sampling exactly as a new generator
// that decodes in the plain dynamic form does, reusing its cache where the shapes allow.
TEST(Generator, KeptCacheAnswersEachCallAsANewGeneratorDoes) {
  auto& m = tiny();
  const auto& tok = *m.tokenizer;
  SamplingOptions greedy;
  greedy.max_new_tokens = 12;
  greedy.stop_at_eos = false;
  SamplingOptions sampled = greedy;
  sampled.temperature = 0.9;
  sampled.top_k = 40;
  sampled.repetition_penalty = 1.3;
  sampled.seed = 7;
  struct Case {
    std::vector<std::vector<int64_t>> prompts;
    SamplingOptions options;
    bool kept;  // whether the call can reuse the cache of the one before
  };
  const std::vector<Case> cases = {
      {{prompt_of(tok, 9)}, greedy, false},                        // the first call makes the cache
      {{prompt_of(tok, 23)}, greedy, true},                        // another prompt, same rows
      {{prompt_of(tok, 5)}, sampled, true},                        // sampled, shorter
      {{prompt_of(tok, 6), prompt_of(tok, 17)}, greedy, false},    // two rows
      {{prompt_of(tok, 21), prompt_of(tok, 4)}, sampled, true},    // other padding, longer
      {{prompt_of(tok, 11), prompt_of(tok, 11)}, greedy, false},   // no row padded
      {{prompt_of(tok, 30), prompt_of(tok, 30)}, sampled, true},
  };
  Generator dynamic_form(m.net, m.tokenizer);
  std::vector<Call> expected;
  for (const auto& c : cases) expected.push_back(call(dynamic_form, c.prompts, c.options));
  ScopedEnv form("LEGO_DECODE_FORM", "static");
  Generator g(m.net, m.tokenizer);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto got = call(g, cases[i].prompts, cases[i].options);
    EXPECT_EQ(got.kept, cases[i].kept) << "call " << i;
    EXPECT_EQ(got.ids, expected[i].ids) << "call " << i;
  }
  EXPECT_FALSE(expected[1].kept) << "the dynamic form keeps no cache";
}

// A new cache is rounded up to 128 slots; a call reuses it while its prompt and answer fit and the cache is
// at most 2 x needed + 256 slots long.
TEST(Generator, KeptCacheIsRemadeWhenTooShortOrTooLong) {
  auto& m = tiny();
  const auto& tok = *m.tokenizer;
  ScopedEnv form("LEGO_DECODE_FORM", "static");
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.stop_at_eos = false;
  // needed = prompt + max_new_tokens
  auto run = [&](size_t prompt, int64_t new_tokens) {
    o.max_new_tokens = new_tokens;
    return call(g, {prompt_of(tok, prompt)}, o);
  };
  EXPECT_FALSE(run(20, 10).kept);   // 30: 128 slots
  EXPECT_TRUE(run(120, 8).kept);    // 128 fits
  EXPECT_FALSE(run(121, 8).kept);   // 129: 256 slots
  EXPECT_FALSE(run(590, 10).kept);  // 600: 640 slots
  EXPECT_TRUE(run(182, 10).kept);   // 192: 640 <= 2 x 192 + 256
  const auto remade = run(181, 10);  // 191: 640 > 638, remade with 256 slots
  EXPECT_FALSE(remade.kept);
  EXPECT_TRUE(run(240, 16).kept);  // 256 fits
  Generator fresh(m.net, m.tokenizer);
  o.max_new_tokens = 10;
  EXPECT_EQ(remade.ids, call(fresh, {prompt_of(tok, 181)}, o).ids);
}

// A call that throws half-way (here the caller's stream callback) leaves nothing kept: the next call makes
// a new cache and answers as if the failed call had never run.
TEST(Generator, ACallThatThrowsKeepsNothingForTheNext) {
  auto& m = tiny();
  ScopedEnv form("LEGO_DECODE_FORM", "static");
  Generator g(m.net, m.tokenizer);
  SamplingOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  const std::vector<std::vector<int64_t>> prompts = {m.tokenizer->encode("A dog barks at the bell")};
  const auto first = call(g, prompts, o);
  int pieces = 0;
  auto failing = [&](int64_t, std::string_view) {
    if (++pieces == 3) throw std::runtime_error("the client went away");
  };
  EXPECT_THROW(g.generate(prompts, o, failing), std::runtime_error);
  EXPECT_EQ(pieces, 3);
  const auto after = call(g, prompts, o);
  EXPECT_FALSE(after.kept);
  EXPECT_EQ(after.ids, first.ids);
  EXPECT_TRUE(call(g, prompts, o).kept);
}

TEST(Generator, UnknownDecodeFormIsRefused) {
  auto& m = tiny();
  ScopedEnv form("LEGO_DECODE_FORM", "graphs");
  Generator g(m.net, m.tokenizer);
  expect_error([&] { g.generate({m.tokenizer->encode("A dog")}, SamplingOptions{}); }, ErrorKind::InvalidArgument,
               {"LEGO_DECODE_FORM", "graphs"});
}

}  // namespace
}  // namespace lego::generate
