// lego encode: one medium through one modality, with every stage written out for inspection and parity
// checks: `input` (preprocessed), `encoder` (encoder output before the adapter), `tokens` (LLM inputs).
#include <boost/program_options.hpp>
#include <torch/torch.h>

#include <iostream>

#include "commands.h"
#include "lego/weights/tensor_source.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_encode(const Args& args) {
  ModelFlags model_flags_;
  std::string modality, in, out;
  uint64_t seed = 0;
  po::options_description d("encode");
  d.add_options()
      ("modality", po::value(&modality), "the model's modality (default: routed by the file's extension)")
      ("in", po::value(&in)->required(), "the media file")
      ("media-seed", po::value(&seed)->default_value(0), "seed of any randomness in reading the medium")
      ("out", po::value(&out)->required(), "safetensors file to write (tensors input, encoder, tokens)");
  d.add(model_flags(model_flags_));
  if (!parse_args(args, d, "lego encode --model DIR [--modality NAME] --in FILE --out OUT.safetensors")) return 0;
  auto pipeline = load_pipeline(model_flags_, host_for(args));
  const auto input = pipeline->resolve({{modality, in}}).front();
  auto& m = pipeline->modality(input.modality);
  torch::NoGradGuard no_grad;
  const auto media = m.load(input.path, seed);
  const auto batch = m.collate({media});
  weights::write_safetensors(out, {{"input", media.tensor},
                                   {"encoder", m.encode_features(batch).squeeze(0).to(torch::kCPU, torch::kFloat32)},
                                   {"tokens", m.encode(batch).squeeze(0).to(torch::kCPU, torch::kFloat32)}});
  std::cout << "wrote " << out << '\n';
  return 0;
}

}  // namespace lego::cli
