// lego eval: a model's grounding accuracy on a data file, with the chance baseline beside each metric.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "commands.h"
#include "lego/eval/evaluation.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_eval(const Args& args) {
  ModelFlags model_flags_;
  eval::EvalOptions options;
  std::string data, report_file, predictions_file;
  std::vector<std::string> roots;
  po::options_description d("eval");
  d.add_options()
      ("task", po::value(&options.task)->required(), "rec, temporal, sound-loc or caption")
      ("data", po::value(&data)->required(), "a data file in the released format (JSON array or JSON Lines)")
      ("root", po::value(&roots)->composing(), "root folder of media: DIR for every modality, or NAME=DIR (repeatable); default: the data file's folder")
      ("batch-size", po::value(&options.batch_size)->default_value(8), "questions answered together")
      ("max-new-tokens", po::value(&options.max_new_tokens)->default_value(64), "longest answer")
      ("limit", po::value(&options.limit)->default_value(0), "evaluate the first N rows only (0: all)")
      ("seed", po::value(&options.seed)->default_value(0), "seed of the chance baseline's draws")
      ("report", po::value(&report_file), "write the JSON report (metrics, chance, predictions) here")
      ("predictions", po::value(&predictions_file), "write per-sample predictions as JSON Lines here");
  d.add(model_flags(model_flags_));
  if (!parse_args(args, d, "lego eval --model DIR --task TASK --data FILE [--root DIR] [--report FILE]")) return 0;
  options.data = data;
  auto pipeline = load_pipeline(model_flags_, host_for(args));
  for (const auto& r : roots) {
    const auto eq = r.find('=');
    if (eq == std::string::npos) {
      for (const auto& name : pipeline->media_order()) options.roots[name] = r;
    } else {
      options.roots[r.substr(0, eq)] = r.substr(eq + 1);
    }
  }
  const auto report = eval::evaluate(*pipeline, options);
  nlohmann::json j = {{"task", report.task}, {"data", report.data}, {"samples", report.samples},
                      {"metrics", report.metrics}, {"chance", report.chance}, {"seconds", report.seconds}};
  nlohmann::json preds = nlohmann::json::array();
  std::string lines;
  for (const auto& p : report.predictions) {
    nlohmann::json row = {{"id", p.id}, {"question", p.question}, {"reference", p.reference},
                          {"prediction", p.prediction}, {"score", p.score}};
    lines += row.dump() + "\n";
    preds.push_back(std::move(row));
  }
  std::cout << j.dump(2) << "\n";
  if (!report_file.empty()) {
    auto full = j;
    full["predictions"] = preds;
    write_file_atomically(report_file, full.dump(2) + "\n");
  }
  if (!predictions_file.empty()) write_file_atomically(predictions_file, lines);
  return 0;
}

}  // namespace lego::cli
