// What Generator and ContinuousBatcher share per sequence: choosing the next token from logits, and the
// text of a row as ids arrive (stop strings, streaming held back while text could still begin one).
// Internal to core/src/generate.
#pragma once

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lego/generate/generator.h"
#include "lego/text/incremental_decoder.h"

namespace lego::generate::detail {

struct RowState {
  explicit RowState(std::shared_ptr<const text::Tokenizer> tokenizer) : decoder(std::move(tokenizer)) {}
  std::vector<int64_t> ids;
  text::IncrementalDecoder decoder;  // decodes recent ids only: a step costs the same at any length
  std::string text;                  // final text so far, cut at a stop string
  size_t streamed = 0;
  bool done = false;
  std::string reason;
};

using TextSink = std::function<void(std::string_view)>;

// The next token of each row of `logits` [B, V] (any device and dtype): argmax when greedy, else a sample
// after process_logits with `history` [B, L] (undefined without a repetition penalty) and `gen`. Throws
// lego::Error(Format) naming the step and row (first_row + b) where the logits are not finite.
torch::Tensor choose_tokens(const torch::Tensor& logits, const torch::Tensor& history, const SamplingOptions& options,
                            at::Generator& gen, int64_t step, int64_t first_row = 0);

// Feeds a chosen id to a row: EOS or a stop string ends it; text that became final goes to `sink`.
void accept_token(RowState& row, int64_t id, const SamplingOptions& options, int64_t eos_id, const TextSink& sink);

// Ends an unfinished row with `reason` ("length", "context"), flushing what the decoder held.
void end_row(RowState& row, const std::string& reason, const SamplingOptions& options, const TextSink& sink);

}  // namespace lego::generate::detail
