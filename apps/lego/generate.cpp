// lego generate: text continuation of one or more prompts (a batch, left-padded).
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "lego/model/language_model.h"
#include "lego/llm/decode_step.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego::cli {
namespace po = boost::program_options;

namespace {

std::vector<int64_t> parse_token_ids(const std::string& text, int64_t vocab_size) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      const int64_t id = std::stoll(item, &used);
      if (used != item.size() || id < 0 || id >= vocab_size) throw std::out_of_range(item);
      ids.push_back(id);
    } catch (const std::logic_error&) {
      throw Error(ErrorKind::InvalidArgument, "--prompt-ids: '" + item + "' is not a token id below " +
                                                  std::to_string(vocab_size));
    }
  }
  if (ids.empty()) throw Error(ErrorKind::InvalidArgument, "--prompt-ids: empty");
  return ids;
}

// Peak resident memory of this process so far: VmHWM of /proc/self/status (ru_maxrss would also count
// the parent's memory at fork, which Linux carries across exec). -1 where /proc is unavailable.
int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

}  // namespace

int run_generate(const Args& args) {
  std::string model_dir;
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_ids;
  std::string dump_logits;
  bool json = false;
  bool no_bos = false;
  bool dump_all = false;
  generate::SamplingOptions sampling;
  RuntimeFlags runtime;
  po::options_description d("generate");
  d.add_options()
      ("model", po::value(&model_dir)->required(), "model directory")
      ("prompt", po::value(&prompts)->composing(), "prompt text; repeat for a batch")
      ("prompt-ids", po::value(&prompt_ids)->composing(), "a prompt as comma-separated token ids (used as given, no BOS added); repeatable")
      ("no-bos", po::bool_switch(&no_bos), "do not prepend the BOS token")
      ("json", po::bool_switch(&json), "print one JSON object per prompt: text, token_ids, prompt_token_ids, timings")
      ("dump-logits", po::value(&dump_logits), "write the last prompt position's logits [B, vocab] as safetensors (tensor 'logits')")
      ("dump-all-logits", po::bool_switch(&dump_all), "with --dump-logits and one prompt: the logits after every prompt token [T, vocab], each from a one-token decoding step");
  d.add(sampling_flags(sampling)).add(runtime_flags(runtime));
  if (!parse_args(args, d, "lego generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [...] [options]")) return 0;
  apply_runtime_flags(runtime);
  sampling.validate();

  auto model = LanguageModel::load(model_dir, {parse_device(runtime.device), parse_dtype(runtime.dtype), {}});
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(model.tokenizer->encode(p, !no_bos));
  for (const auto& p : prompt_ids) ids.push_back(parse_token_ids(p, model.tokenizer->vocab_size()));
  if (ids.empty()) throw Error(ErrorKind::InvalidArgument, "give --prompt or --prompt-ids");
  generate::Generator generator(model.net, model.tokenizer);

  if (dump_all && (dump_logits.empty() || ids.size() != 1)) {
    throw Error(ErrorKind::InvalidArgument, "--dump-all-logits needs --dump-logits FILE and exactly one prompt");
  }
  if (!dump_logits.empty()) {
    weights::write_safetensors(dump_logits,
                               {{"logits", dump_all ? llm::stepwise_logits(model.net, ids.front()) : generator.last_logits(ids)}});
  }
  const bool stream_text = !json && ids.size() == 1;
  generate::StreamCallback stream;
  if (stream_text) {
    stream = [](int64_t, std::string_view piece) { std::cout << piece << std::flush; };
  }
  generate::GenerationTimings t;
  auto results = generator.generate(ids, sampling, stream, &t);
  if (stream_text) {
    std::cout << '\n';
    return 0;
  }
  const nlohmann::json timings = {
      {"prefill_ms", t.prefill_ms},
      {"decode_ms", t.decode_ms},
      {"prompt_tokens", t.prompt_tokens},
      {"generated_tokens", t.generated_tokens},
      {"peak_rss_bytes", peak_rss_bytes()},
      {"step_ms", t.step_ms},
      {"decode_ms_per_token", t.generated_tokens > 0 ? t.decode_ms * static_cast<double>(ids.size()) / t.generated_tokens : 0.0}};
  for (size_t i = 0; i < results.size(); ++i) {
    if (json) {
      nlohmann::json j = {{"text", results[i].text},
                          {"token_ids", results[i].token_ids},
                          {"prompt_token_ids", ids[i]},
                          {"finish_reason", results[i].finish_reason},
                          {"timings", timings}};
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    } else {
      std::cout << results[i].text << '\n';
    }
  }
  return 0;
}

}  // namespace lego::cli
