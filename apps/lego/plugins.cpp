// lego plugins: every plugin library found, with its versions and whether it loaded (and why not).
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/host/plugin_host.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_plugins(const Args& args) {
  std::vector<std::string> plugin_dirs;
  bool json = false;
  po::options_description d("plugins");
  d.add_options()
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look first (repeatable); then LEGO_PLUGIN_PATH, then the install's lib/lego/plugins")
      ("json", po::bool_switch(&json), "print a JSON array");
  if (!parse_args(args, d, "lego plugins [--plugin-dir DIR ...] [--json]")) return 0;
  const host::PluginHost host({plugin_dirs.begin(), plugin_dirs.end()});
  if (json) {
    auto out = nlohmann::json::array();
    for (const auto& r : host.records()) {
      out.push_back({{"file", r.file.string()}, {"modality", r.modality}, {"abi_version", r.abi_version},
                     {"sdk_version", r.sdk_version}, {"torch_version", r.torch_version},
                     {"placeholder", r.placeholder}, {"tokens", r.tokens}, {"file_types", r.file_types},
                     {"grounding", {{"box_values", r.grounding.box_values}, {"spans", r.grounding.spans}}},
                     {"state", r.loaded ? "loaded" : "refused"}, {"reason", r.reason}});
    }
    std::cout << out.dump(2) << '\n';
    return 0;
  }
  std::cout << "searched:";
  for (const auto& dir : host::PluginHost::search_path({plugin_dirs.begin(), plugin_dirs.end()})) std::cout << ' ' << dir.string();
  std::cout << '\n';
  for (const auto& r : host.records()) {
    if (r.loaded) {
      std::string types;
      for (const auto& t : r.file_types) types += (types.empty() ? "" : ",") + t;
      std::cout << "loaded   " << r.modality << "  " << r.placeholder << " x" << r.tokens << "  ." << types << "  (ABI " << r.abi_version
                << ", SDK " << r.sdk_version << ", libtorch " << r.torch_version << ")  " << r.file.string() << '\n';
    } else {
      std::cout << "refused  " << r.file.string() << ": " << r.reason << '\n';
    }
  }
  if (host.records().empty()) std::cout << "no plugins found\n";
  return 0;
}

}  // namespace lego::cli
