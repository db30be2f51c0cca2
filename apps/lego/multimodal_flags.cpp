#include "multimodal_flags.h"

#include <boost/program_options.hpp>

namespace lego::cli {
namespace po = boost::program_options;

po::options_description model_flags(ModelFlags& f) {
  po::options_description d("model");
  d.add_options()
      ("model", po::value(&f.model_dir)->required(), "model directory")
      ("plugin-dir", po::value(&f.plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  d.add(runtime_flags(f.runtime));
  return d;
}

LoadedModel load_model(const ModelFlags& f) {
  apply_runtime_flags(f.runtime);
  LoadedModel out;
  out.host = std::make_unique<host::PluginHost>(std::vector<std::filesystem::path>(f.plugin_dirs.begin(), f.plugin_dirs.end()));
  out.model = std::make_unique<host::MultimodalModel>(host::MultimodalModel::load(
      f.model_dir, {parse_device(f.runtime.device), parse_dtype(f.runtime.dtype)}, *out.host));
  return out;
}

}  // namespace lego::cli
