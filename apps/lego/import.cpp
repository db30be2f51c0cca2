// lego import: released checkpoints -> lego model directories. Each loaded plugin claims its branch of a
// checkpoint and may ask for an extra input, offered here as `--NAME DIR`.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/model/import.h"
#include "lego/sdk/error.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_import(const Args& args) {
  ImportOptions o;
  std::vector<std::string> plugin_dirs;
  po::options_description d("import");
  d.add_options()
      ("from", po::value(&o.kind)->required(), "checkpoint kind: hf-llama or groundinggpt")
      ("in", po::value(&o.in)->required(), "checkpoint directory")
      ("out", po::value(&o.out)->required(), "model directory to write")
      ("set", po::value(&o.overrides)->composing(), "section.key=value the tensors cannot tell (head counts, e.g. the released branches' eva_heads, qformer_heads, imagebind_heads)")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  const auto host = host_for(args);
  // The extra inputs the plugins' branches ask for, each once.
  std::map<std::string, std::string> inputs;
  po::options_description extra("inputs of the plugins' branches");
  for (const auto& name : host->modalities()) {
    for (const auto& input : host->provider(name)->import_inputs) {
      if (d.find_nothrow(input.name, false) != nullptr || extra.find_nothrow(input.name, false) != nullptr) continue;
      extra.add_options()(input.name.c_str(), po::value(&inputs[input.name]), (input.help + " (" + name + ")").c_str());
    }
  }
  d.add(extra);
  if (!parse_args(args, d, "lego import --from hf-llama|groundinggpt --in DIR [--INPUT DIR ...] --out MODEL_DIR")) return 0;
  if (o.kind != "hf-llama" && o.kind != "groundinggpt") {
    throw Error(ErrorKind::InvalidArgument, "--from '" + o.kind + "': supported kinds are hf-llama and groundinggpt");
  }
  for (const auto& [name, dir] : inputs) {
    if (!dir.empty()) o.inputs[name] = dir;
  }
  const auto report = import_checkpoint(o, o.kind == "groundinggpt" ? host.get() : nullptr);
  std::cout << "imported " << report.imported.size() << " tensors into " << o.out.string();
  if (!report.skipped.empty()) std::cout << " (skipped " << report.skipped.size() << " unused: rotary buffers, parts of branches no model part uses)";
  std::cout << '\n';
  return 0;
}

}  // namespace lego::cli
