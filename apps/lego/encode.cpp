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
  po::options_description d("encode");
  d.add_options()
      ("modality", po::value(&modality)->required(), "image, video or sound")
      ("in", po::value(&in)->required(), "the media file")
      ("out", po::value(&out)->required(), "safetensors file to write (tensors input, encoder, tokens)");
  d.add(model_flags(model_flags_));
  if (!parse_args(args, d, "lego encode --model DIR --modality NAME --in FILE --out OUT.safetensors")) return 0;
  auto loaded = load_model(model_flags_);
  auto& m = loaded.model->modality(modality);
  torch::NoGradGuard no_grad;
  const auto media = m.load(in);
  auto batch = media.tensor.unsqueeze(0);
  weights::write_safetensors(out, {{"input", media.tensor},
                                   {"encoder", m.encode_features(batch).squeeze(0).to(torch::kCPU, torch::kFloat32)},
                                   {"tokens", m.encode(batch).squeeze(0).to(torch::kCPU, torch::kFloat32)}});
  std::cout << "wrote " << out << '\n';
  return 0;
}

}  // namespace lego::cli
