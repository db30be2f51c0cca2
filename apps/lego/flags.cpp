// Flag groups shared by several subcommands.
#include <boost/program_options.hpp>
#include <torch/utils.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "commands.h"
#include "lego/sdk/error.h"

namespace lego::cli {
namespace po = boost::program_options;

bool parse_args(const Args& args, const po::options_description& options, const std::string& usage,
                std::vector<po::option>* parsed) {
  po::options_description all;
  all.add(options);
  all.add_options()("help,h", "show this help");
  po::variables_map vm;
  const auto result = po::command_line_parser(args).options(all).run();
  if (parsed != nullptr) *parsed = result.options;
  po::store(result, vm);
  if (vm.count("help")) {
    std::cout << "usage: " << usage << "\n\n" << all << '\n';
    return false;
  }
  po::notify(vm);
  return true;
}

po::options_description sampling_flags(generate::SamplingOptions& o) {
  po::options_description d("sampling");
  d.add_options()
      ("max-new-tokens", po::value(&o.max_new_tokens)->default_value(o.max_new_tokens), "most tokens to generate")
      ("temperature", po::value(&o.temperature)->default_value(o.temperature), "0: greedy; > 0: sample from softmax(logits/T)")
      ("top-k", po::value(&o.top_k)->default_value(o.top_k), "sample among the k most likely tokens (0: all)")
      ("top-p", po::value(&o.top_p)->default_value(o.top_p), "sample within this probability mass (1: all)")
      ("repetition-penalty", po::value(&o.repetition_penalty)->default_value(o.repetition_penalty), "penalty on tokens already present (1: none)")
      ("stop", po::value(&o.stop)->composing(), "stop when the text contains this string (repeatable)")
      ("ignore-eos", po::bool_switch()->notifier([&o](bool v) { o.stop_at_eos = !v; }), "keep generating past the end-of-sequence token")
      ("seed", po::value(&o.seed)->default_value(o.seed), "seed of the sampler")
      ("no-cuda-graph", po::bool_switch()->notifier([&o](bool v) { o.cuda_graphs = !v; }),
       "on CUDA, launch each decoding step's kernels one by one instead of replaying a CUDA graph");
  return d;
}

po::options_description runtime_flags(RuntimeFlags& f) {
  po::options_description d("runtime");
  d.add_options()
      ("device", po::value(&f.device)->default_value(f.device), "cpu, cuda or cuda:N")
      ("dtype", po::value(&f.dtype)->default_value(f.dtype), "fp32, bf16 or fp16")
      ("threads", po::value(&f.threads)->default_value(f.threads), "CPU threads (0: libtorch's default)");
  return d;
}

void apply_runtime_flags(const RuntimeFlags& flags) {
  if (flags.threads < 0) throw Error(ErrorKind::InvalidArgument, "--threads must be >= 0");
  // More threads than cores only makes every step wait on the others (1000 on 2 cores ran past a minute).
  const auto cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (flags.threads > cores) {
    throw Error(ErrorKind::InvalidArgument, "--threads " + std::to_string(flags.threads) + ": this machine has " +
                                                std::to_string(cores) + " cores");
  }
  if (flags.threads > 0) torch::set_num_threads(flags.threads);
}

}  // namespace lego::cli
