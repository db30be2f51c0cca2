// Flags and helpers shared by the multimodal subcommands (infer, chat, encode).
#pragma once

#include <boost/program_options/options_description.hpp>

#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "lego/host/multimodal_model.h"

namespace lego::cli {

struct ModelFlags {
  std::string model_dir;
  std::vector<std::string> plugin_dirs;
  RuntimeFlags runtime;
};

// --model, --plugin-dir and the runtime flags.
boost::program_options::options_description model_flags(ModelFlags& out);

// The host and the model it composes; the host outlives the model's modalities.
struct LoadedModel {
  std::unique_ptr<host::PluginHost> host;
  std::unique_ptr<host::MultimodalModel> model;
};
LoadedModel load_model(const ModelFlags& flags);

}  // namespace lego::cli
