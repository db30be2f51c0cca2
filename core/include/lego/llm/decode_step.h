// One-token decoding over a KvCache: the generation loop's step, optionally replayed as a CUDA graph.
//
// Batch-1 decoding of a 7B model on a GPU is bound by the CPU launching ~1000 small kernels per token, not
// by the GPU reading the weights. A CUDA graph records one step's kernels once and replays them with one
// launch. Replay needs every shape and address fixed, so the graph mode runs the step in its static form
// (AttentionContext::slot): the token id, its position and its cache slot live in device buffers that are
// refilled before each replay, and attention covers all of the cache's capacity with later slots masked.
#pragma once

#include <memory>

#include "lego/llm/llama.h"

namespace lego::llm {

enum class DecodeMode {
  Dynamic,  // the plain forward: attends the filled slots only (what CPUs run)
  Static,   // the static form, run eagerly: the same arithmetic a graph replays, on any device
  Graph,    // the static form captured into a CUDA graph (needs a CUDA device and a LEGO_WITH_CUDA build)
};

class DecodeStep {
 public:
  // `cache` (and `key_valid` [B, capacity] bool on the cache's device, or undefined when no row is padded)
  // must outlive this object; the cache already holds the prompt. Throws lego::Error(Unsupported) for
  // DecodeMode::Graph where graphs are not available (see graphs_available).
  DecodeStep(LlamaForCausalLM model, KvCache& cache, torch::Tensor key_valid, DecodeMode mode);
  ~DecodeStep();
  DecodeStep(const DecodeStep&) = delete;
  DecodeStep& operator=(const DecodeStep&) = delete;

  // Feeds `ids` [B] int64 (any device) at rotary `positions` [B] int64, writes them at slot
  // cache.length(), advances the cache and returns the logits [B, vocab] of the next token. The returned
  // tensor is valid until the next call (in graph mode it is the graph's output buffer). Throws
  // lego::Error(InvalidArgument) for an id outside the vocabulary or a full cache, before running anything.
  // In the static and graph modes, ids and positions already on the model's device (a greedy argmax there)
  // are used without a round trip to the host, so that steps queue without waiting; their range is then
  // the caller's to guarantee.
  torch::Tensor step(const torch::Tensor& ids, const torch::Tensor& positions);

  DecodeMode mode() const;
  // Whether this build can capture CUDA graphs and `device` is a CUDA device that exists.
  static bool graphs_available(const torch::Device& device);

 private:
  struct Impl;
  static torch::Tensor run_static_step(Impl& s);
  std::unique_ptr<Impl> impl_;
};

// Logits [T, vocab] (float32, CPU) after each of `ids` (T >= 1), each from a one-token decoding step as
// generation runs it on the CPU (the first id is a one-token prompt): what a teacher-forced comparison of
// weight formats or decoding kernels reads. Throws lego::Error(InvalidArgument) for no ids, an id outside
// the vocabulary or more ids than the model's context.
torch::Tensor stepwise_logits(LlamaForCausalLM model, const std::vector<int64_t>& ids);

}  // namespace lego::llm
