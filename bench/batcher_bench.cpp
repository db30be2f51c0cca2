// The continuous batcher alone, without HTTP, media or a second thread: the scheduler's share of
// bench/serve_load.py, in a run quiet enough to compare two builds. N sequences (prompts of the given
// lengths in turn, random embeddings, sampled, each with its own seed) are decoded one by one, then
// arriving --arrive at a time before every step until all have joined. Prints one JSON line: seconds of
// each run (--runs), tokens, and the batcher's steps, rebuilds and placements in the concurrent run.
//
//   batcher_bench --model DIR [--sequences 64] [--lengths 95,40,36] [--max-new-tokens 16] [--arrive 4]
//                 [--max-batch 64] [--runs 3]
#include <torch/torch.h>

#include <chrono>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lego/generate/batcher.h"
#include "lego/model/language_model.h"
#include "lego/sdk/error.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  int64_t sequences = 64, max_new = 16, arrive = 4, max_batch = 64, runs = 3;
  std::vector<int64_t> lengths = {95, 40, 36};
};

int64_t positive(const std::string& flag, const std::string& value) {
  size_t used = 0;
  const long long v = std::stoll(value, &used);
  if (used != value.size() || v < 1 || v > 100000) {
    throw lego::Error(lego::ErrorKind::InvalidArgument, flag + " wants a whole number from 1 to 100000, got '" + value + "'");
  }
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw lego::Error(lego::ErrorKind::InvalidArgument, flag + " wants a value");
    const std::string value = argv[i + 1];
    if (flag == "--model") {
      o.model = value;
    } else if (flag == "--sequences") {
      o.sequences = positive(flag, value);
    } else if (flag == "--max-new-tokens") {
      o.max_new = positive(flag, value);
    } else if (flag == "--arrive") {
      o.arrive = positive(flag, value);
    } else if (flag == "--max-batch") {
      o.max_batch = positive(flag, value);
    } else if (flag == "--runs") {
      o.runs = positive(flag, value);
    } else if (flag == "--lengths") {
      o.lengths.clear();
      std::stringstream in(value);
      for (std::string item; std::getline(in, item, ',');) o.lengths.push_back(positive(flag, item));
    } else {
      throw lego::Error(lego::ErrorKind::InvalidArgument, "unknown flag " + flag);
    }
  }
  if (o.model.empty() || o.lengths.empty()) throw lego::Error(lego::ErrorKind::InvalidArgument, "--model DIR is required");
  return o;
}

struct Run {
  double seconds = 0;
  int64_t tokens = 0;
  lego::generate::BatcherStats stats;
};

// Decodes every sequence, `arrive` joining before each step (all at once when arrive >= N; one by one,
// each alone to its end, when `alone`).
Run run(const lego::LanguageModel& m, const Options& o, const std::vector<torch::Tensor>& prompts, bool alone) {
  lego::generate::ContinuousBatcher batcher(m.net, m.tokenizer, o.max_batch);
  Run r;
  auto sequence = [&](size_t i) {
    lego::generate::Sequence s;
    s.embeds = prompts[i];
    s.prompt_ids.assign(static_cast<size_t>(prompts[i].size(1)), 5);
    s.options.max_new_tokens = o.max_new;
    s.options.temperature = 0.8;
    s.options.seed = i;
    s.options.stop_at_eos = false;
    s.on_done = [&r](lego::generate::GenerationOutput out, std::exception_ptr error) {
      if (error) std::rethrow_exception(error);
      r.tokens += static_cast<int64_t>(out.token_ids.size());
    };
    return s;
  };
  const auto t0 = Clock::now();
  size_t next = 0;
  while (next < prompts.size() || !batcher.empty()) {
    std::vector<lego::generate::Sequence> joining;
    const size_t room = static_cast<size_t>(o.max_batch - batcher.size());
    const size_t count = alone ? (batcher.empty() ? 1 : 0) : std::min<size_t>(static_cast<size_t>(o.arrive), room);
    for (size_t k = 0; k < count && next < prompts.size(); ++k) joining.push_back(sequence(next++));
    if (!joining.empty()) batcher.add_all(std::move(joining));
    batcher.step();
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.stats = batcher.stats();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto o = parse(argc, argv);
    torch::NoGradGuard no_grad;
    const auto m = lego::LanguageModel::load(o.model);
    const int64_t hidden = m.net->options().hidden_size();
    torch::manual_seed(0);
    std::vector<torch::Tensor> prompts;
    for (int64_t i = 0; i < o.sequences; ++i) {
      const int64_t t = o.lengths[static_cast<size_t>(i) % o.lengths.size()];
      prompts.push_back(torch::randn({1, t, hidden}) * 0.02);
    }
    run(m, o, prompts, false);  // warm-up
    std::ostringstream out;
    out << "{";
    for (const bool alone : {true, false}) {
      out << (alone ? "\"one_by_one\":{\"seconds\":[" : ",\"together\":{\"seconds\":[");
      Run last;
      for (int64_t k = 0; k < o.runs; ++k) {
        last = run(m, o, prompts, alone);
        out << (k ? "," : "") << last.seconds;
      }
      out << "],\"tokens\":" << last.tokens << ",\"steps\":" << last.stats.steps << ",\"rebuilds\":" << last.stats.rebuilds
          << ",\"placements\":" << last.stats.placements << "}";
    }
    out << "}";
    std::cout << out.str() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "batcher_bench: " << e.what() << std::endl;
    return 1;
  }
}
