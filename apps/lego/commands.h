// The `lego` subcommands: one file each, registered in main.cpp. Each returns the process exit code and
// throws lego::Error (printed by main as one line) or boost::program_options errors (usage, exit 2).
#pragma once

#include <string>
#include <vector>

#include <boost/program_options/option.hpp>
#include <boost/program_options/options_description.hpp>

#include "lego/generate/generator.h"

namespace lego::cli {

using Args = std::vector<std::string>;

int run_init_model(const Args& args);
int run_generate(const Args& args);
int run_import(const Args& args);
int run_quantize(const Args& args);
int run_tokenize(const Args& args);
int run_infer(const Args& args);
int run_chat(const Args& args);
int run_encode(const Args& args);
int run_plugins(const Args& args);
int run_probe(const Args& args);
int run_train(const Args& args);
int run_data(const Args& args);
int run_consolidate(const Args& args);
int run_synth(const Args& args);
int run_eval(const Args& args);
int run_convert(const Args& args);
int run_serve(const Args& args);

// Parses `args` against `options`; prints `usage` + options and returns false on --help. `parsed`, when
// given, receives the options in command-line order.
bool parse_args(const Args& args, const boost::program_options::options_description& options, const std::string& usage,
                std::vector<boost::program_options::option>* parsed = nullptr);

// The sampling flags shared by generate (and later infer/chat): --max-new-tokens, --temperature, ...
boost::program_options::options_description sampling_flags(generate::SamplingOptions& out);

// --device/--dtype/--threads, applied by apply_runtime_flags.
struct RuntimeFlags {
  std::string device = "cpu";
  std::string dtype = "fp32";
  int threads = 0;
};
boost::program_options::options_description runtime_flags(RuntimeFlags& out);
void apply_runtime_flags(const RuntimeFlags& flags);

}  // namespace lego::cli
