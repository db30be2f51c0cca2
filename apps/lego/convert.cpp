// lego convert: a public dataset's annotation files -> the released training JSON (lego/data/convert.h).
// Prints a one-line summary of what was read, written and dropped; --report writes the counts as JSON.
#include <boost/program_options.hpp>

#include <iostream>

#include "commands.h"
#include "lego/data/convert.h"
#include "lego/fs/atomic_file.h"
#include "lego/sdk/error.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_convert(const Args& args) {
  data::ConvertOptions o;
  std::vector<std::string> inputs;
  std::string out_file, report_file, templates = "configs/templates";
  std::string sources;
  for (const auto& s : data::convert_sources()) sources += (sources.empty() ? "" : ", ") + s;
  po::options_description d("convert");
  d.add_options()
      ("from", po::value(&o.source)->required(), ("the dataset: " + sources).c_str())
      ("in", po::value(&inputs)->required(), "an input file of the dataset, in the order docs/datasets.md gives (repeat)")
      ("out", po::value(&out_file)->required(), "the training JSON to write")
      ("templates", po::value(&templates)->default_value(templates), "folder of the task templates (TASK.txt)")
      ("seed", po::value(&o.seed)->default_value(o.seed), "seed of the phrasing drawn for each question")
      ("limit", po::value(&o.limit)->default_value(o.limit), "write at most this many items (0: all)")
      ("split", po::value(&o.split)->default_value(o.split), "refcoco, refcoco+, refcocog: the split to keep (\"\": all)")
      ("media-prefix", po::value(&o.media_prefix)->default_value(o.media_prefix), "put in front of every media path written")
      ("min-words", po::value(&o.min_words)->default_value(o.min_words), "drop phrases and captions with fewer words")
      ("max-words", po::value(&o.max_words)->default_value(o.max_words), "drop phrases and captions with more words")
      ("report", po::value(&report_file), "write the counts read, written and dropped (per reason) here as JSON");
  if (!parse_args(args, d,
                  "lego convert --from SOURCE --in FILE [--in FILE] --out OUT.json [--templates DIR] [--seed S] "
                  "[--report R.json] [--limit N]")) {
    return 0;
  }
  o.inputs.assign(inputs.begin(), inputs.end());
  o.templates_dir = templates;
  const auto result = data::convert(o);
  fs::write_file_atomically(out_file, result.json);
  if (!report_file.empty()) fs::write_file_atomically(report_file, result.report.to_json());
  std::cout << result.report.summary() << '\n';
  return 0;
}

}  // namespace lego::cli
