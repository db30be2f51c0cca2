// Importers: released checkpoints -> lego model directories (DESIGN.md, "Weights and model directories").
//
// Weight names are kept as released, so importing is a check and a copy, not a rewrite: the architecture
// comes from config.json, every tensor is checked against it, and names the model does not use are listed
// (and refused) rather than silently dropped.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lego {

namespace host {
class PluginHost;
}

struct ImportReport {
  std::vector<std::string> imported;  // tensor names written
  std::vector<std::string> skipped;   // names known not to matter (rotary inv_freq buffers, parts of a
                                      // branch or an extra input that the model does not use)
};

struct ImportOptions {
  // "hf-llama": a Hugging Face LLaMA / Vicuna directory. "groundinggpt": the released LEGO checkpoint
  // (the same layout plus modality branches, each claimed by the loaded plugin that knows it).
  std::string kind = "hf-llama";
  std::filesystem::path in;   // config.json, tokenizer.model, weights (safetensors or .bin, maybe sharded)
  std::filesystem::path out;  // model directory to write: model.ini, tokenizer.model, model.safetensors
  // Extra inputs the plugins ask for (Modality::import_inputs), by name, e.g. the CLIP tower's directory.
  std::map<std::string, std::filesystem::path> inputs;
  // "section.key=value" for what the tensors cannot tell (head counts), e.g. NAME.eva_heads=16.
  std::vector<std::string> overrides;
};

// Imports a checkpoint. Modality branches are checked against the weights their plugin (made by `host`)
// declares; missing tensors and tensors nothing uses are listed in the error that refuses them.
ImportReport import_checkpoint(const ImportOptions& options, const host::PluginHost* host);

}  // namespace lego
