// LanguageModel: a model directory opened for text generation — model.ini, tokenizer.model and the
// weights (DESIGN.md, "Weights and model directories"). The multimodal Model of core/host builds on it.
//
// model.ini's [llm] section is the architecture (see docs/formats.md); [tokenizer] names the added tokens.
// Loading never allocates the model twice: parameters start uninitialised and adopt the mapped weights.
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <memory>

#include "lego/config/config.h"
#include "lego/llm/llama.h"
#include "lego/text/tokenizer.h"

namespace lego {

struct LoadOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  // "section.key" -> value set over model.ini's keys before anything is made (a training stage's
  // modality sections: `[video] random_crop = true`). The model directory is not changed.
  std::map<std::string, std::string> overrides;
};

// [llm] keys -> LlamaOptions (validated); throws naming the file and key.
llm::LlamaOptions llama_options_from_config(const config::Config& config);
// LlamaOptions -> [llm] keys (the inverse, used by init-model and import).
void llama_options_to_config(const llm::LlamaOptions& options, config::Config& config);

// The tokenizer a model directory's [tokenizer] section names (file, added_tokens).
text::Tokenizer tokenizer_from_model_dir(const std::filesystem::path& dir, const config::Config& config);

struct LanguageModel {
  std::filesystem::path dir;
  config::Config config;
  llm::LlamaOptions options;
  llm::LlamaForCausalLM net;
  std::shared_ptr<const text::Tokenizer> tokenizer;  // shared with the generators made from it
  torch::Device device;
  torch::ScalarType dtype;

  // Opens `dir`; missing files, tensors or wrong shapes throw lego::Error naming them.
  static LanguageModel load(const std::filesystem::path& dir, const LoadOptions& options = {});
};

// Whether a checkpoint tensor belongs to the language model (HF LLaMA names: model.embed_tokens, model.layers,
// model.norm, lm_head) rather than to a modality. LanguageModel::load refuses such tensors that it does not use.
bool is_language_model_tensor(const std::string& name);

// Parses "cpu", "cuda", "cuda:1" and "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16".
torch::Device parse_device(const std::string& name);
torch::ScalarType parse_dtype(const std::string& name);

}  // namespace lego
