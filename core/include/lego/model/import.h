// Importers: released checkpoints -> lego model directories (DESIGN.md, "Weights and model directories").
//
// Weight names are kept as released, so importing is a check and a copy, not a rewrite: the architecture
// comes from config.json, every tensor is checked against it, and names the model does not use are listed
// (and refused) rather than silently dropped.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace lego {

struct ImportReport {
  std::vector<std::string> imported;  // tensor names written
  std::vector<std::string> skipped;   // names known to be derivable (e.g. rotary inv_freq buffers)
};

// A Hugging Face LLaMA / Vicuna directory (config.json, tokenizer.model, safetensors or .bin weights,
// optionally sharded, optionally added tokens) -> `out` (model.ini, tokenizer.model, model.safetensors).
ImportReport import_hf_llama(const std::filesystem::path& in, const std::filesystem::path& out);

}  // namespace lego
