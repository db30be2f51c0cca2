// init_model: a fresh model directory from a model config — a sentencepiece tokenizer trained on the
// config's corpus and random weights (N(0, 0.02), as HF LLaMA initialises). Used by `lego init-model`,
// the demo and tests, which need real model directories without downloads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>

#include "lego/config/config.h"

namespace lego {
namespace host {
class PluginHost;
}

// `config` has [llm] (architecture without vocab_size), [tokenizer] (either `file`, an existing
// sentencepiece model, or `corpus` and `vocab_size` to train one; paths relative to the config file; and
// added_tokens) and one section per modality (`plugin = NAME` plus the plugin's keys), whose modalities
// `host` makes. Writes model.ini, tokenizer.model and model.safetensors (every tensor in `dtype`: fp32,
// bf16 or fp16) into `out`. The weights are drawn and written one tensor at a time, so a model far larger
// than memory (the released 7B shapes) is made in a few hundred megabytes.
void init_model(const config::Config& config, const std::filesystem::path& out, uint64_t seed,
                const host::PluginHost& host, c10::ScalarType dtype = c10::ScalarType::Float);

}  // namespace lego
