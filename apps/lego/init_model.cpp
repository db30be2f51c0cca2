// lego init-model: a model directory with random weights and a tokenizer (trained on the config's corpus,
// or an existing one).
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/host/plugin_host.h"
#include "lego/model/init_model.h"
#include "lego/model/language_model.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_init_model(const Args& args) {
  std::string config_file;
  std::string out_dir;
  uint64_t seed = 0;
  std::vector<std::string> overrides;
  std::vector<std::string> plugin_dirs;
  std::string dtype = "fp32";
  std::string tokenizer;
  po::options_description d("init-model");
  d.add_options()
      ("config", po::value(&config_file)->required(), "model config (e.g. configs/models/tiny.ini)")
      ("out", po::value(&out_dir)->required(), "model directory to create")
      ("seed", po::value(&seed)->default_value(0), "seed of the random weights")
      ("dtype", po::value(&dtype)->default_value("fp32"), "dtype of the weights written: fp32, bf16 or fp16")
      ("tokenizer", po::value(&tokenizer), "use this sentencepiece model (sets tokenizer.file) instead of training one")
      ("set", po::value(&overrides)->composing(), "override a config key: section.key=value (repeatable)")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  if (!parse_args(args, d, "lego init-model --config FILE --out DIR [--seed N] [--dtype fp32|bf16|fp16] [--tokenizer FILE] [--set section.key=value ...]")) return 0;
  auto cfg = config::read_file(config_file);
  for (const auto& o : overrides) cfg.set(o);
  if (!tokenizer.empty()) cfg.set("tokenizer.file", std::filesystem::absolute(tokenizer).string());
  const auto weights_dtype = parse_dtype(dtype);
  host::PluginHost host({plugin_dirs.begin(), plugin_dirs.end()});
  init_model(cfg, out_dir, seed, host, weights_dtype);
  std::cout << "wrote " << out_dir << '\n';
  return 0;
}

}  // namespace lego::cli
