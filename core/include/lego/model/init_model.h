// init_model: a fresh model directory from a model config — a sentencepiece tokenizer trained on the
// config's corpus and random weights (N(0, 0.02), as HF LLaMA initialises). Used by `lego init-model`,
// the demo and tests, which need real model directories without downloads.
#pragma once

#include <cstdint>
#include <filesystem>

#include "lego/config/config.h"

namespace lego {
namespace host {
class PluginHost;
}

// `config` has [llm] (architecture without vocab_size), [tokenizer] (corpus relative to the config file,
// vocab_size, added_tokens) and one section per modality (`plugin = NAME` plus the plugin's keys), whose
// modalities `host` makes. Writes model.ini, tokenizer.model and model.safetensors into `out`.
void init_model(const config::Config& config, const std::filesystem::path& out, uint64_t seed,
                const host::PluginHost& host);

}  // namespace lego
