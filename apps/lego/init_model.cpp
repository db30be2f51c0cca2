// lego init-model: a model directory with random weights and a tokenizer trained on the config's corpus.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/fs/atomic_file.h"
#include "lego/model/language_model.h"
#include "lego/sdk/error.h"
#include "lego/sdk/nn/linear.h"
#include "lego/weights/tensor_source.h"

namespace lego::cli {
namespace po = boost::program_options;

// HF's LlamaConfig.initializer_range.
constexpr double kInitStd = 0.02;

int run_init_model(const Args& args) {
  std::string config_file;
  std::string out_dir;
  uint64_t seed = 0;
  std::vector<std::string> overrides;
  po::options_description d("init-model");
  d.add_options()
      ("config", po::value(&config_file)->required(), "model config (e.g. configs/models/tiny.ini)")
      ("out", po::value(&out_dir)->required(), "model directory to create")
      ("seed", po::value(&seed)->default_value(0), "seed of the random weights")
      ("set", po::value(&overrides)->composing(), "override a config key: section.key=value (repeatable)");
  if (!parse_args(args, d, "lego init-model --config FILE --out DIR [--seed N] [--set section.key=value ...]")) return 0;

  auto cfg = config::Config::from_file(config_file);
  for (const auto& o : overrides) cfg.set(o);
  const std::filesystem::path out(out_dir);
  std::filesystem::create_directories(out);

  // Tokenizer first: its size fixes the vocabulary.
  const auto corpus = std::filesystem::path(config_file).parent_path() / cfg.get_string("tokenizer.corpus");
  text::TrainerOptions trainer;
  trainer.vocab_size = cfg.get_int("tokenizer.vocab_size", trainer.vocab_size);
  text::train_sentencepiece(corpus, out / "tokenizer", trainer);
  std::filesystem::remove(out / "tokenizer.vocab");
  const auto added = cfg.get_list("tokenizer.added_tokens");
  const auto tokenizer = text::Tokenizer::from_file(out / "tokenizer.model", added);

  cfg.set("llm.vocab_size", std::to_string(tokenizer.vocab_size()));
  const auto options = llama_options_from_config(cfg);
  llm::LlamaForCausalLM net(options);
  nn::init_normal(*net, kInitStd, seed);

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : net->named_parameters()) tensors.emplace_back(p.key(), p.value());
  weights::write_safetensors(out / "model.safetensors", tensors, {{"format", "pt"}, {"producer", "lego init-model"}});

  config::Config model_ini;
  llama_options_to_config(options, model_ini);
  model_ini.set("tokenizer.file", "tokenizer.model");
  if (!added.empty()) {
    std::string joined;
    for (const auto& a : added) joined += (joined.empty() ? "" : " ") + a;
    model_ini.set("tokenizer.added_tokens", joined);
  }
  fs::write_file_atomically(out / "model.ini", model_ini.to_ini());
  std::cout << "wrote " << out.string() << " (" << net->parameters().size() << " tensors, vocabulary "
            << tokenizer.vocab_size() << ")\n";
  return 0;
}

}  // namespace lego::cli
