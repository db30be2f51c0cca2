#include "lego/llm/decode_step.h"

#include <ATen/ATen.h>

#include <string>

#include "lego/sdk/error.h"

#ifdef LEGO_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lego::llm {

struct DecodeStep::Impl {
  LlamaForCausalLM model;
  KvCache* cache;
  torch::Tensor key_valid;
  DecodeMode mode;
  torch::Device device;
  // Static form: inputs refilled before each step, and the output of the last one.
  torch::Tensor ids, positions, slot, out;
#ifdef LEGO_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  bool warmed = false;
#endif

  Impl(LlamaForCausalLM m, KvCache& c, torch::Tensor valid, DecodeMode md, torch::Device dev)
      : model(std::move(m)), cache(&c), key_valid(std::move(valid)), mode(md), device(dev) {}

  // The static step: every shape depends on the batch and the cache's capacity only.
  torch::Tensor run_static() {
    AttentionContext ctx;
    ctx.positions = positions;
    ctx.key_valid = key_valid;
    ctx.cache = cache;
    ctx.slot = slot;
    auto& table = model->model->embed_tokens->weight;
    // The ids were range-checked on the host before they were copied in (the Embedding module's own check
    // reads them back, which a graph cannot).
    auto embeds = table.index_select(0, ids.view(-1)).view({ids.size(0), 1, table.size(1)});
    return model->logits(model->model->forward(embeds, ctx)).squeeze(1);
  }

#ifdef LEGO_WITH_CUDA
  void run_graph() {
    if (graph) {
      graph->replay();
      return;
    }
    // First step: run eagerly on a side stream, which also warms up cuBLAS and the allocator. Second step:
    // capture (capturing runs nothing) and replay. Later steps: replay.
    auto side = at::cuda::getStreamFromPool();
    c10::cuda::device_synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      if (!warmed) {
        out = run_static();
      } else {
        auto g = std::make_unique<at::cuda::CUDAGraph>();
        g->capture_begin();
        out = run_static();
        g->capture_end();
        graph = std::move(g);
      }
    }
    c10::cuda::device_synchronize();
    if (!warmed) {
      warmed = true;
      return;
    }
    graph->replay();
  }
#endif
};

bool DecodeStep::graphs_available(const torch::Device& device) {
#ifdef LEGO_WITH_CUDA
  return device.is_cuda() && c10::cuda::device_count() > (device.has_index() ? device.index() : 0);
#else
  (void)device;
  return false;
#endif
}

DecodeStep::DecodeStep(LlamaForCausalLM model, KvCache& cache, torch::Tensor key_valid, DecodeMode mode) {
  const auto device = model->lm_head ? model->lm_head->weight.device() : model->model->embed_tokens->weight.device();
  if (mode == DecodeMode::Graph && !graphs_available(device)) {
    throw Error(ErrorKind::Unsupported, "CUDA graphs need a CUDA device and a build with LEGO_WITH_CUDA=ON (device " +
                                            device.str() + ")");
  }
  if (key_valid.defined() && (key_valid.dim() != 2 || key_valid.size(0) != cache.batch() ||
                              key_valid.size(1) != cache.capacity())) {
    throw Error(ErrorKind::InvalidArgument, "DecodeStep: key_valid must be [batch, capacity] = [" +
                                                std::to_string(cache.batch()) + ", " + std::to_string(cache.capacity()) + "]");
  }
  impl_ = std::make_unique<Impl>(std::move(model), cache, std::move(key_valid), mode, device);
  if (mode != DecodeMode::Dynamic) {
    impl_->model->model->fuse_projections();
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
    impl_->ids = torch::zeros({cache.batch(), 1}, i64);
    impl_->positions = torch::zeros({cache.batch(), 1}, i64);
    impl_->slot = torch::zeros({1}, i64);
  }
}

DecodeStep::~DecodeStep() = default;

DecodeMode DecodeStep::mode() const { return impl_->mode; }

torch::Tensor DecodeStep::step(const torch::Tensor& ids, const torch::Tensor& positions) {
  auto& s = *impl_;
  const int64_t batch = s.cache->batch();
  if (ids.dim() != 1 || ids.size(0) != batch || positions.dim() != 1 || positions.size(0) != batch) {
    throw Error(ErrorKind::InvalidArgument, "DecodeStep: ids and positions must be [" + std::to_string(batch) + "]");
  }
  if (s.cache->length() >= s.cache->capacity()) {
    throw Error(ErrorKind::InvalidArgument, "DecodeStep: the key/value cache is full (" +
                                                std::to_string(s.cache->capacity()) + " positions)");
  }
  if (s.mode != DecodeMode::Dynamic && s.device.is_cuda() && ids.device() == s.device && positions.device() == s.device) {
    // Tokens chosen on the device (an argmax there): no round trip to the host, so consecutive steps queue
    // without waiting. Their range is the caller's guarantee, as an argmax over the vocabulary gives it.
    s.ids.copy_(ids.view({batch, 1}), /*non_blocking=*/true);
    s.positions.copy_(positions.to(torch::kInt64).view({batch, 1}), /*non_blocking=*/true);
    return run_static_step(s);
  }
  const auto host_ids = ids.to(torch::kCPU, torch::kInt64);
  const int64_t vocab = s.model->options().vocab_size();
  const auto lo = host_ids.min().item<int64_t>();
  const auto hi = host_ids.max().item<int64_t>();
  if (lo < 0 || hi >= vocab) {
    throw Error(ErrorKind::InvalidArgument, "DecodeStep: token id " + std::to_string(lo < 0 ? lo : hi) +
                                                " is outside the vocabulary of " + std::to_string(vocab));
  }
  if (s.mode == DecodeMode::Dynamic) {
    AttentionContext ctx;
    ctx.positions = positions.to(s.device, torch::kInt64).view({batch, 1});
    ctx.key_valid = s.key_valid;
    ctx.cache = s.cache;
    auto embeds = s.model->model->embed(host_ids.view({batch, 1}).to(s.device));
    return s.model->logits(s.model->model->forward(embeds, ctx)).squeeze(1);
  }
  s.ids.copy_(host_ids.view({batch, 1}));
  s.positions.copy_(positions.to(torch::kInt64).view({batch, 1}));
  return run_static_step(s);
}

torch::Tensor DecodeStep::run_static_step(Impl& s) {
  s.slot.fill_(s.cache->length());
  if (s.mode == DecodeMode::Graph) {
#ifdef LEGO_WITH_CUDA
    s.run_graph();
#endif
  } else {
    s.out = s.run_static();
  }
  s.cache->advance(1);
  return s.out;
}

torch::Tensor stepwise_logits(LlamaForCausalLM model, const std::vector<int64_t>& ids) {
  torch::NoGradGuard no_grad;
  const auto steps = static_cast<int64_t>(ids.size());
  if (steps == 0) throw Error(ErrorKind::InvalidArgument, "stepwise logits need at least one token");
  if (steps > model->options().max_position()) {
    throw Error(ErrorKind::InvalidArgument, std::to_string(steps) + " tokens exceed the model context of " +
                                                std::to_string(model->options().max_position()));
  }
  const auto& table = model->model->embed_tokens->weight;
  const auto device = table.device();
  const auto all = torch::tensor(ids, torch::kInt64);
  KvCache cache(model->options(), 1, steps, torch::TensorOptions().dtype(table.dtype()).device(device));
  AttentionContext ctx;
  ctx.positions = torch::zeros({1, 1}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  ctx.cache = &cache;
  auto out = torch::empty({steps, model->options().vocab_size()}, torch::kFloat32);
  auto first = model->model->embed(all.narrow(0, 0, 1).view({1, 1}).to(device));  // range-checked by the table
  out[0].copy_(model->logits(model->model->forward(first, ctx)).view({-1}));
  DecodeStep decoder(model, cache, torch::Tensor(), DecodeMode::Dynamic);
  for (int64_t t = 1; t < steps; ++t) {
    out[t].copy_(decoder.step(all.narrow(0, t, 1), torch::full({1}, t, torch::kInt64)).view({-1}));
  }
  return out;
}

}  // namespace lego::llm
