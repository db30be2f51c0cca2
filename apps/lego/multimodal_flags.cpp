#include "multimodal_flags.h"

#include <boost/program_options.hpp>

#include <algorithm>

namespace lego::cli {
namespace po = boost::program_options;

std::vector<std::filesystem::path> plugin_dirs_of(const Args& args) {
  std::vector<std::filesystem::path> out;
  const std::string flag = "--plugin-dir";
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) {
      out.emplace_back(args[++i]);
    } else if (args[i].rfind(flag + "=", 0) == 0) {
      out.emplace_back(args[i].substr(flag.size() + 1));
    }
  }
  return out;
}

std::shared_ptr<host::PluginHost> host_for(const Args& args) {
  return std::make_shared<host::PluginHost>(plugin_dirs_of(args));
}

po::options_description model_flags(ModelFlags& f) {
  po::options_description d("model");
  d.add_options()
      ("model", po::value(&f.model_dir)->required(), "model directory")
      ("plugin-dir", po::value(&f.plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  d.add(runtime_flags(f.runtime));
  return d;
}

po::options_description media_flags(const host::PluginHost& host, const po::options_description& taken,
                                    std::vector<std::string>& shorthands) {
  po::options_description d("media");
  d.add_options()("media", po::value<std::vector<std::string>>()->composing(),
                  "[NAME=]PATH: a file for the modality NAME, or routed by its extension (repeatable)");
  for (const auto& name : host.modalities()) {
    if (name == "media" || taken.find_nothrow(name, false) != nullptr) continue;
    shorthands.push_back(name);
    const auto* r = host.provider(name);
    d.add_options()(name.c_str(), po::value<std::vector<std::string>>()->composing(),
                    ("a file for the " + name + " modality, " + r->placeholder + " in the prompt (= --media " + name +
                     "=PATH; repeatable)")
                        .c_str());
  }
  return d;
}

MediaInput parse_media(const std::string& value) {
  const auto eq = value.find('=');
  if (eq != std::string::npos && eq > 0) {
    const std::string name = value.substr(0, eq);
    const bool is_name = std::all_of(name.begin(), name.end(), [](unsigned char c) {
      return std::isalnum(c) || c == '_' || c == '-';
    });
    // A file whose own name has '=' stays a path.
    std::error_code ec;
    if (is_name && !std::filesystem::exists(value, ec)) return {name, value.substr(eq + 1)};
  }
  return {"", value};
}

std::vector<MediaInput> media_of(const std::vector<po::option>& parsed, const std::vector<std::string>& shorthands) {
  std::vector<MediaInput> out;
  for (const auto& opt : parsed) {
    const bool shorthand = std::find(shorthands.begin(), shorthands.end(), opt.string_key) != shorthands.end();
    if (opt.string_key != "media" && !shorthand) continue;
    for (const auto& v : opt.value) out.push_back(shorthand ? MediaInput{opt.string_key, v} : parse_media(v));
  }
  return out;
}

std::unique_ptr<Pipeline> load_pipeline(const ModelFlags& f, std::shared_ptr<const host::PluginHost> host) {
  apply_runtime_flags(f.runtime);
  return Pipeline::load(f.model_dir, {parse_device(f.runtime.device), parse_dtype(f.runtime.dtype), {}}, std::move(host));
}

}  // namespace lego::cli
