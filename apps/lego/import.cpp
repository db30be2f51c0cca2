// lego import: released checkpoints -> lego model directories.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/host/plugin_host.h"
#include "lego/model/import.h"
#include "lego/sdk/error.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_import(const Args& args) {
  ImportOptions o;
  std::vector<std::string> plugin_dirs;
  po::options_description d("import");
  d.add_options()
      ("from", po::value(&o.kind)->required(), "checkpoint kind: hf-llama or groundinggpt")
      ("in", po::value(&o.in)->required(), "checkpoint directory")
      ("clip", po::value(&o.clip), "HF CLIP directory for the image branch (groundinggpt)")
      ("out", po::value(&o.out)->required(), "model directory to write")
      ("set", po::value(&o.overrides)->composing(), "section.key=value the tensors cannot tell (head counts: video.eva_heads, video.qformer_heads, sound.imagebind_heads, sound.qformer_heads)")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  if (!parse_args(args, d, "lego import --from hf-llama|groundinggpt --in DIR [--clip DIR] --out MODEL_DIR")) return 0;
  if (o.kind != "hf-llama" && o.kind != "groundinggpt") {
    throw Error(ErrorKind::InvalidArgument, "--from '" + o.kind + "': supported kinds are hf-llama and groundinggpt");
  }
  std::unique_ptr<host::PluginHost> host;
  if (o.kind == "groundinggpt") host = std::make_unique<host::PluginHost>(std::vector<std::filesystem::path>(plugin_dirs.begin(), plugin_dirs.end()));
  const auto report = import_checkpoint(o, host.get());
  std::cout << "imported " << report.imported.size() << " tensors into " << o.out.string();
  if (!report.skipped.empty()) std::cout << " (skipped " << report.skipped.size() << " unused: rotary buffers, CLIP text tower)";
  std::cout << '\n';
  return 0;
}

}  // namespace lego::cli
