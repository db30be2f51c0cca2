// lego synth: write the SynthGround benchmark with the modalities of a model (or a model config).
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/config/config.h"
#include "lego/data/synthground.h"
#include "lego/host/plugin_host.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_synth(const Args& args) {
  data::SynthOptions options;
  std::string out, model, config_file, templates;
  std::vector<std::string> counts, plugin_dirs;
  po::options_description d("synth");
  d.add_options()
      ("out", po::value(&out)->required(), "the folder to write (replaced whole once complete)")
      ("seed", po::value(&options.seed)->default_value(0), "seed of every scene")
      ("size", po::value(&options.size)->default_value("small"), "small or full (10x small)")
      ("count", po::value(&counts)->composing(), "rows of one split and task: SPLIT.TASK=N, e.g. train.rec=500 (repeatable)")
      ("model", po::value(&model), "a model directory whose modalities render the media")
      ("config", po::value(&config_file), "or a model config (configs/models/*.ini) whose sections name them")
      ("templates", po::value(&templates), "folder of the task templates (default: the source tree's configs/templates)")
      ("max-objects", po::value(&options.max_objects)->default_value(4), "objects per scene at most, 1-4")
      ("threads", po::value(&options.threads)->default_value(2), "rendering threads")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  if (!parse_args(args, d, "lego synth --out DIR (--model DIR | --config FILE) [--seed S] [--size small|full]")) return 0;
  if (model.empty() == config_file.empty()) throw Error(ErrorKind::InvalidArgument, "give one of --model and --config");
  for (const auto& c : counts) {
    const auto eq = c.find('=');
    if (eq == std::string::npos) throw Error(ErrorKind::InvalidArgument, "--count " + c + ": not SPLIT.TASK=N");
    try {
      size_t used = 0;
      const auto n = std::stoll(c.substr(eq + 1), &used);
      if (used != c.size() - eq - 1) throw std::invalid_argument(c);
      options.counts[c.substr(0, eq)] = n;
    } catch (const std::exception&) {
      throw Error(ErrorKind::InvalidArgument, "--count " + c + ": N is not a whole number");
    }
  }
  options.out = out;
  options.templates = templates.empty() ? std::filesystem::path(LEGO_TEMPLATES_DIR) : std::filesystem::path(templates);
  const auto host = host_for(args);
  const auto cfg = config::read_file(model.empty() ? std::filesystem::path(config_file)
                                                   : std::filesystem::path(model) / "model.ini");
  std::vector<std::pair<std::string, std::shared_ptr<Modality>>> modalities;
  for (auto& [section, spec] : modality_sections(cfg, model.empty() ? cfg.source().parent_path() : std::filesystem::path(model))) {
    modalities.emplace_back(section, host->create(spec.first, spec.second));
  }
  const auto summary = data::write_synthground(modalities, options, [](const std::string& line) {
    std::cerr << "lego synth: " << line << "\n";
  });
  for (const auto& s : summary.skipped) std::cerr << "lego synth: skipped " << s << "\n";
  for (const auto& [file, n] : summary.rows) std::cout << out << "/" << file << ".json: " << n << " rows\n";
  return 0;
}

}  // namespace lego::cli
