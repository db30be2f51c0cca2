// lego import: released checkpoints -> lego model directories.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/model/import.h"
#include "lego/sdk/error.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_import(const Args& args) {
  std::string from;
  std::string in;
  std::string out;
  po::options_description d("import");
  d.add_options()
      ("from", po::value(&from)->required(), "checkpoint kind: hf-llama")
      ("in", po::value(&in)->required(), "checkpoint directory")
      ("out", po::value(&out)->required(), "model directory to write");
  if (!parse_args(args, d, "lego import --from hf-llama --in DIR --out MODEL_DIR")) return 0;
  if (from != "hf-llama") throw Error(ErrorKind::InvalidArgument, "--from '" + from + "': supported kinds are hf-llama");
  const auto report = import_hf_llama(in, out);
  std::cout << "imported " << report.imported.size() << " tensors into " << out;
  if (!report.skipped.empty()) std::cout << " (skipped " << report.skipped.size() << " derived buffers)";
  std::cout << '\n';
  return 0;
}

}  // namespace lego::cli
