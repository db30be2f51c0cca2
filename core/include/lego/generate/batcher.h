// Continuous batching: many sequences decoded together, each joining when it arrives and leaving when it
// ends, each with its own sampling settings, seed, stop strings and stream (DESIGN.md, core/generate).
//
// A sequence is prefilled (alone, or with those of similar length that arrive with it, left-padded as
// Generator batches prompts), then decoded one token per step() together with every other sequence in the
// batch. In the batch's key/value cache each row's tokens are right-aligned to a common length and the
// slots in front of a shorter row are masked, so rows of any length share one decoding step. A sequence
// that ends leaves its row free; a sequence that joins takes a free row (llm::KvCache::place) when its
// prompt fits in front of the common length and its answer in the room behind it. Only otherwise, or when
// most rows are free, is the cache rebuilt (llm::KvCache::gather), and then with spare rows and room for
// sequences still to come, so that a stream of arrivals costs a few rebuilds rather than one per arrival.
// Free rows are decoded along (their output unused): in a step bound by the weights' bandwidth they cost
// little. Sampling is per row with the row's own seeded generator, exactly as a batch of one samples in
// Generator: a seed gives the same text alone or in company (up to the last-bit differences of batched
// matrix products).
//
// Not thread-safe: one thread (a server's scheduler) calls add(), cancel() and step().
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "lego/generate/generator.h"
#include "lego/llm/llama.h"
#include "lego/text/tokenizer.h"

namespace lego::generate {

struct Sequence {
  torch::Tensor embeds;             // [1, T, hidden] prompt embeddings on the model's device, no padding
  std::vector<int64_t> prompt_ids;  // the T prompt ids (the repetition penalty reads them)
  SamplingOptions options;
  std::function<void(std::string_view)> on_text;  // text as it becomes final (may be empty)
  // Called once when the sequence ends: its output, or the error that ended it (then output is partial).
  std::function<void(GenerationOutput, std::exception_ptr)> on_done;
};

struct BatcherStats {
  int64_t prompt_tokens = 0;     // prefilled so far
  int64_t generated_tokens = 0;  // sampled so far
  int64_t steps = 0;             // batched decoding steps run
  int64_t rebuilds = 0;          // cache rebuilds (a join that did not fit, or most rows free)
  int64_t placements = 0;        // joins into a free row of the cache, without a rebuild
};

class ContinuousBatcher {
 public:
  // `max_batch` sequences at most decode together; throws InvalidArgument for max_batch < 1 or no tokenizer.
  ContinuousBatcher(llm::LlamaForCausalLM model, std::shared_ptr<const text::Tokenizer> tokenizer, int64_t max_batch);
  ~ContinuousBatcher();
  ContinuousBatcher(const ContinuousBatcher&) = delete;
  ContinuousBatcher& operator=(const ContinuousBatcher&) = delete;

  // Prefills `sequence` and adds it; returns its id. Throws lego::Error (InvalidArgument for bad options,
  // a prompt past the model's context or a full batch) before anything changes; on_done is then not called.
  uint64_t add(Sequence sequence);
  // add() for several sequences, prefilled together: one left-padded forward for each group of similar
  // length (padding at most a fifth of a group's tokens); the ids in order. Throws as add() does, naming
  // the sequence, before anything changes.
  std::vector<uint64_t> add_all(std::vector<Sequence> sequences);
  // Drops a sequence (its client went away) without calling on_done; false when it is not here.
  bool cancel(uint64_t id);
  // Chooses the next token of every sequence, ends those that finish (calling on_done), and runs one
  // batched decoding step for the rest. An error of the batched forward ends every sequence with it.
  void step();

  int64_t size() const;
  int64_t max_batch() const { return max_batch_; }
  bool full() const { return size() >= max_batch_; }
  bool empty() const { return size() == 0; }
  const BatcherStats& stats() const { return stats_; }

 private:
  struct Row;
  void seat();
  void rebuild();

  llm::LlamaForCausalLM model_;
  std::shared_ptr<const text::Tokenizer> tokenizer_;
  int64_t max_batch_;
  uint64_t next_id_ = 1;
  std::vector<std::unique_ptr<Row>> rows_;  // in the order they joined
  std::unique_ptr<llm::KvCache> cache_;     // the batch's cache; each row's index in it is its cache_row
  torch::Tensor key_valid_;                 // [cache rows, capacity] bool for cache_
  std::vector<int64_t> free_rows_;          // rows of cache_ that no sequence holds
  int64_t longest_prompt_ = 0;              // the longest prompt and answer seen: the room a rebuild leaves
  int64_t longest_answer_ = 0;              // for sequences still to come
  BatcherStats stats_;
};

}  // namespace lego::generate
