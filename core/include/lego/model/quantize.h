// lego quantize: a model directory -> the same model with int8 or int4 language-model weights
// (docs/formats.md, "Quantised weights").
//
// The decoder's projections are quantised in their fused decoding layout (q/k/v as `qkv_proj`, gate/up as
// `gate_up_proj`) and the LM head in int8; embeddings, norms and every modality tensor are copied as they
// are. The new directory loads like any other (its weights mapped, not copied) and runs on the CPU.
#pragma once

#include <cstdint>
#include <filesystem>

#include "lego/llm/quant.h"

namespace lego {

struct QuantizeReport {
  int64_t matrices = 0;       // matrices quantised
  int64_t copied = 0;         // tensors copied unchanged
  double dense_bytes = 0;     // bytes of the quantised matrices before
  double quantized_bytes = 0; // and after
};

// Writes `out` (whole or not at all) from the dense model directory `in`. Throws lego::Error for a model
// that is already quantised, `out` equal to `in`, a group other than 32/64/128, or non-finite weights
// (naming the tensor).
QuantizeReport quantize_model_dir(const std::filesystem::path& in, const std::filesystem::path& out,
                                  const llm::QuantFormat& format);

}  // namespace lego
