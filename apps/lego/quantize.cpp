// lego quantize: a dense model directory -> the same model with int8 or int4 language-model weights.
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "commands.h"
#include "lego/model/quantize.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_quantize(const Args& args) {
  std::filesystem::path model_dir, out;
  std::string to;
  int64_t group = 32;
  po::options_description d("quantize");
  d.add_options()
      ("model", po::value(&model_dir)->required(), "dense model directory (fp32, bf16 or fp16 weights)")
      ("to", po::value(&to)->required(), "int8 or int4 (the LM head is int8 in both)")
      ("group", po::value(&group)->default_value(32), "columns per float16 scale: 32, 64 or 128")
      ("out", po::value(&out)->required(), "model directory to write");
  if (!parse_args(args, d, "lego quantize --model DIR --to int8|int4 [--group 32|64|128] --out DIR")) return 0;
  llm::QuantFormat format{llm::parse_weight_format(to, "--to"), group};
  format.check("--group");
  const auto r = quantize_model_dir(model_dir, out, format);
  char line[256];
  std::snprintf(line, sizeof line, "quantised %lld matrices to %s (group %lld): %.1f MiB -> %.1f MiB; copied %lld tensors; wrote %s",
                static_cast<long long>(r.matrices), to.c_str(), static_cast<long long>(group), r.dense_bytes / (1 << 20),
                r.quantized_bytes / (1 << 20), static_cast<long long>(r.copied), out.string().c_str());
  std::cout << line << '\n';
  return 0;
}

}  // namespace lego::cli
