// lego generate: text continuation of one or more prompts (a batch, left-padded).
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/model/language_model.h"
#include "lego/weights/tensor_source.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_generate(const Args& args) {
  std::string model_dir;
  std::vector<std::string> prompts;
  std::string dump_logits;
  bool json = false;
  bool no_bos = false;
  generate::SamplingOptions sampling;
  RuntimeFlags runtime;
  po::options_description d("generate");
  d.add_options()
      ("model", po::value(&model_dir)->required(), "model directory")
      ("prompt", po::value(&prompts)->required()->composing(), "prompt text; repeat for a batch")
      ("no-bos", po::bool_switch(&no_bos), "do not prepend the BOS token")
      ("json", po::bool_switch(&json), "print one JSON object per prompt: text, token_ids, prompt_token_ids, timings")
      ("dump-logits", po::value(&dump_logits), "write the last prompt position's logits [B, vocab] as safetensors (tensor 'logits')");
  d.add(sampling_flags(sampling)).add(runtime_flags(runtime));
  if (!parse_args(args, d, "lego generate --model DIR --prompt TEXT [--prompt TEXT ...] [options]")) return 0;
  apply_runtime_flags(runtime);
  sampling.validate();

  auto model = LanguageModel::load(model_dir, {parse_device(runtime.device), parse_dtype(runtime.dtype)});
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(model.tokenizer.encode(p, !no_bos));
  generate::Generator generator(model.net, model.tokenizer);

  if (!dump_logits.empty()) {
    weights::write_safetensors(dump_logits, {{"logits", generator.last_logits(ids)}});
  }
  const bool stream_text = !json && prompts.size() == 1;
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
