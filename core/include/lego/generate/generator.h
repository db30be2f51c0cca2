// Text generation on a LLaMA decoder: greedy and sampled decoding with a KV cache, batched left-padded
// prompts, stop strings, streaming and seeds (DESIGN.md, core/generate).
//
// Prompts enter either as token ids or as input embeddings (the multimodal path splices media features
// into the embeddings first); both share one decoding loop. Logits are processed in the order of the HF
// reference (repetition penalty, temperature, top-k, top-p) and sampled on the CPU with a seeded
// generator, so a seed gives the same text on every device. Text is decoded and searched for stop
// strings incrementally: a step costs the same however long the answer already is.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lego/llm/llama.h"
#include "lego/text/tokenizer.h"

namespace lego::generate {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  // 0 selects greedy decoding (argmax); > 0 samples from softmax(logits / temperature).
  double temperature = 0.0;
  int64_t top_k = 0;   // 0: no top-k filter
  double top_p = 1.0;  // 1: no nucleus filter
  // HF's CTRL-style penalty on every token already in the sequence (prompt included); 1 disables it.
  double repetition_penalty = 1.0;
  // Generation of a row ends when its text contains one of these; the text is cut before the one
  // that starts first.
  std::vector<std::string> stop;
  bool stop_at_eos = true;
  uint64_t seed = 0;
  // On a CUDA device, replay each decoding step as a CUDA graph (llm::DecodeStep); no effect elsewhere.
  bool cuda_graphs = true;
  // Throws lego::Error(InvalidArgument) naming the first bad field.
  void validate() const;
};

struct GenerationOutput {
  std::vector<int64_t> token_ids;  // generated ids (EOS excluded)
  std::string text;                // decoded, cut at the first stop string
  std::string finish_reason;       // "eos", "stop", "length" or "context"
};

struct GenerationTimings {
  int64_t prompt_tokens = 0;     // padded prompt length x batch
  int64_t generated_tokens = 0;  // decode steps x batch
  double prefill_ms = 0;
  double decode_ms = 0;
  // Whether the call decoded over the cache and step (on CUDA, the captured graph) kept from the
  // generator's previous call, instead of making new ones (see Generator::generate_from_embeddings).
  bool kept_decoding = false;
  // Wall time of each decode step (sampling, text, the next token's forward pass), to see how the cost
  // of a step changes with the length of the answer.
  std::vector<double> step_ms;
};

// Called with (row, new text) as text becomes final; held back while it could still begin a stop
// string or while it ends in an unfinished UTF-8 character.
using StreamCallback = std::function<void(int64_t row, std::string_view text)>;

// One call at a time: on a CUDA device a generator keeps the key/value cache and the captured decoding
// graph of its last call for the next one (see generate_from_embeddings), so it is not thread-safe.
class Generator {
 public:
  // Shares `tokenizer`, so the generator stays usable after its caller lets go of it; throws
  // InvalidArgument when it is null.
  Generator(llm::LlamaForCausalLM model, std::shared_ptr<const text::Tokenizer> tokenizer);
  ~Generator();
  Generator(Generator&&) noexcept;
  Generator& operator=(Generator&&) noexcept;

  // Decodes a continuation of each prompt (token ids, BOS included when wanted).
  std::vector<GenerationOutput> generate(const std::vector<std::vector<int64_t>>& prompts,
                                         const SamplingOptions& options, const StreamCallback& stream = {},
                                         GenerationTimings* timings = nullptr);

  // Same, from prompt embeddings [B, T, hidden] that are left-padded; `valid` [B, T] bool marks real
  // positions, `prompt_ids` [B, T] the ids (for the repetition penalty; pad where features were spliced).
  // With CUDA graphs (SamplingOptions::cuda_graphs on a CUDA device) the cache and the graph captured in
  // one call serve the next call with the same batch size and padding whose prompt and answer fit the
  // cache (a cache at most about twice as long as needed), so that only the first call pays for the
  // graph's warm-up and capture (two eager steps); the cache is zeroed between calls, and a call that
  // throws keeps nothing. LEGO_DECODE_FORM=static keeps the cache the same way on any device and runs the
  // graph's static form eagerly instead (LEGO_DECODE_FORM=auto or unset: the default; another value is
  // InvalidArgument).
  std::vector<GenerationOutput> generate_from_embeddings(const torch::Tensor& embeds, const torch::Tensor& valid,
                                                         const torch::Tensor& prompt_ids,
                                                         const SamplingOptions& options,
                                                         const StreamCallback& stream = {},
                                                         GenerationTimings* timings = nullptr);

  // Logits [B, vocab] (float32, CPU) at the last real position of each prompt, computed exactly as the
  // first decoding step does.
  torch::Tensor last_logits(const std::vector<std::vector<int64_t>>& prompts);
  // The same from left-padded prompt embeddings [B, T, hidden] and `valid` [B, T].
  torch::Tensor last_logits(const torch::Tensor& embeds, const torch::Tensor& valid);

  // Left-pads prompts to one length: ids [B, T] (pad id), valid [B, T] bool.
  std::pair<torch::Tensor, torch::Tensor> pad_batch(const std::vector<std::vector<int64_t>>& prompts) const;

 private:
  void check_context(int64_t prompt_tokens) const;  // throws InvalidArgument past the model's context

  llm::LlamaForCausalLM model_;
  std::shared_ptr<const text::Tokenizer> tokenizer_;
  struct KeptDecoding;  // the last call's cache and decoding step (a graph on CUDA)
  std::unique_ptr<KeptDecoding> kept_;
};

// Applies repetition penalty, temperature, top-k and top-p to `logits` [B, V] (float32) in place of a copy
// and returns the processed logits; `history` [B, L] holds each row's ids so far.
torch::Tensor process_logits(const torch::Tensor& logits, const torch::Tensor& history, const SamplingOptions& options);

}  // namespace lego::generate
