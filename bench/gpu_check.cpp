// The GPU check's measurements (scripts/gpu-check.sh runs this and keeps its JSON):
// - parity: the model maths on the device against the same modules on the CPU (which the parity suite
//   proves equal to the reference implementations), and CUDA-graph decoding against plain decoding;
// - bandwidth: device copy bandwidth, the denominator of the decode roofline;
// - decode: tokens/s of a 7B-shaped LLaMA (random bf16 weights, batch 1, 256 new tokens), with and without
//   CUDA graphs, as % of the roofline (weight bytes per token / copy bandwidth);
// - train: one training step of a 1.3B-shaped LLaMA (activation checkpointing, AdamW) and its model FLOPs
//   utilisation, in both of lego train's bf16 precisions: bf16 weights with fp32 master copies (DeepSpeed's
//   bf16 mode, train.precision = bf16) and bf16 autocast over fp32 weights (bf16-autocast).
// `--quick` runs every section on tiny shapes, so that the script can be exercised on a CPU machine.
//
// Usage: gpu_check --device cuda|cpu --out results.json [--quick]
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "lego/llm/decode_step.h"
#include "lego/llm/llama.h"
#include "lego/sdk/nn/clip_vision.h"
#include "lego/sdk/nn/linear.h"
#include "lego/sdk/nn/projector.h"
#include "lego/sdk/nn/qformer.h"
#include "lego/train/master_weights.h"

#ifdef LEGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using lego::llm::AttentionContext;
using lego::llm::DecodeMode;
using lego::llm::DecodeStep;
using lego::llm::KvCache;
using lego::llm::LlamaForCausalLM;
using lego::llm::LlamaOptions;

struct Settings {
  torch::Device device{torch::kCPU};
  bool quick = false;
};

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Every parameter of `module` replaced by a fresh tensor on `options`' device and dtype: N(0, std) for
// matrices, 1 for norm scales, 0 for biases. Nothing of the size of the model is made on the CPU.
void randomize_on(torch::nn::Module& module, torch::TensorOptions options, double std) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters(true)) {
    auto& t = p.value();
    const auto& name = p.key();
    torch::Tensor fresh;
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
      fresh = torch::zeros(t.sizes(), options);
    } else if (t.dim() == 1) {
      fresh = torch::ones(t.sizes(), options);
    } else {
      fresh = torch::empty(t.sizes(), options).normal_(0.0, std);
    }
    t.set_data(fresh);
  }
}

double max_rel(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kCPU, torch::kFloat64);
  auto w = want.to(torch::kCPU, torch::kFloat64);
  return ((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item<double>();
}

// ---------------------------------------------------------------------------------------------------------
json device_info(const Settings& s) {
  json j = {{"device", s.device.str()}, {"torch", TORCH_VERSION}, {"quick", s.quick}};
#ifdef LEGO_WITH_CUDA
  j["built_with_cuda"] = true;
  if (s.device.is_cuda()) {
    const auto* p = at::cuda::getCurrentDeviceProperties();
    j["name"] = p->name;
    j["multiprocessors"] = p->multiProcessorCount;
    j["memory_gib"] = static_cast<double>(p->totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
    j["compute_capability"] = std::to_string(p->major) + "." + std::to_string(p->minor);
  }
#else
  j["built_with_cuda"] = false;
#endif
  return j;
}

// Bytes read plus bytes written per second by a device-to-device copy.
json bandwidth(const Settings& s) {
  const int64_t bytes = s.quick ? (int64_t{64} << 20) : (int64_t{2} << 30);
  auto src = torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(s.device)).fill_(1);
  auto dst = torch::empty_like(src);
  for (int i = 0; i < 3; ++i) dst.copy_(src);
  sync(s.device);
  const int reps = 20;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) dst.copy_(src);
  sync(s.device);
  const double secs = seconds_since(t0);
  return {{"bytes", bytes}, {"copies", reps}, {"gb_per_s", 2.0 * static_cast<double>(bytes) * reps / secs / 1e9}};
}

// Dense bf16 matrix product throughput, the practical ceiling beside the datasheet's.
json matmul_peak(const Settings& s) {
  const int64_t n = s.quick ? 256 : 8192;
  const auto dtype = s.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  auto a = torch::randn({n, n}, torch::TensorOptions().dtype(dtype).device(s.device));
  auto b = torch::randn({n, n}, torch::TensorOptions().dtype(dtype).device(s.device));
  for (int i = 0; i < 3; ++i) (void)torch::mm(a, b);
  sync(s.device);
  const int reps = 10;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) (void)torch::mm(a, b);
  sync(s.device);
  const double secs = seconds_since(t0);
  return {{"n", n}, {"dtype", dtype == torch::kBFloat16 ? "bf16" : "fp32"},
          {"tflop_per_s", 2.0 * n * n * n * reps / secs / 1e12}};
}

// ---------------------------------------------------------------------------------------------------------
LlamaOptions small_llama() { return LlamaOptions(512, 256, 688, 4, 8).num_kv_heads(4).max_position(512); }

// Prefills `prompt` [1, T] into `cache` (empty) and decodes `steps` greedy tokens with `decoder`, which
// steps over that cache, choosing each token on the host as the generator does; returns the step logits
// [steps, 1, V] on the CPU in float32.
torch::Tensor decode_greedy(LlamaForCausalLM& m, KvCache& cache, DecodeStep& decoder, const torch::Tensor& prompt,
                            int64_t steps) {
  torch::NoGradGuard no_grad;
  const auto device = prompt.device();
  const int64_t len = prompt.size(1);
  AttentionContext ctx;
  ctx.positions = torch::arange(len, torch::TensorOptions().dtype(torch::kInt64).device(device)).unsqueeze(0);
  ctx.cache = &cache;
  auto logits = m->forward(m->model->embed(prompt), ctx).select(1, len - 1);
  std::vector<torch::Tensor> out;
  for (int64_t t = 0; t < steps; ++t) {
    auto next = logits.to(torch::kCPU, torch::kFloat32).argmax(1);
    logits = decoder.step(next, torch::full({1}, len + t, torch::kInt64)).clone();
    out.push_back(logits.to(torch::kCPU, torch::kFloat32));
  }
  return torch::stack(out);
}

// The same over a new cache of `capacity` slots (0: just enough) and a new decoder in `mode`, made before the
// prefill as the generator makes them.
torch::Tensor greedy_steps(LlamaForCausalLM& m, const torch::Tensor& prompt, DecodeMode mode, int64_t steps,
                           int64_t capacity = 0) {
  KvCache cache(m->options(), 1, capacity > 0 ? capacity : prompt.size(1) + steps,
                torch::TensorOptions().dtype(m->lm_head->weight.dtype()).device(prompt.device()));
  DecodeStep decoder(m, cache, torch::Tensor(), mode);
  return decode_greedy(m, cache, decoder, prompt, steps);
}

json parity(const Settings& s) {
  json j;
  torch::NoGradGuard no_grad;
  const torch::Device cpu(torch::kCPU);
  // fp32 on the device must be fp32: no TF32 in convolutions (cuDNN's default) or products.
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  constexpr double kFp32Bar = 1e-4;  // max |device - cpu| / max |cpu|
  constexpr double kBf16Bar = 5e-2;  // bf16 keeps 8 bits of mantissa; 4 layers of rounding

  auto guarded = [&](const std::string& name, const std::function<void()>& body) {
    try {
      body();
    } catch (const std::exception& e) {
      const std::string what = e.what();
      j[name] = {{"error", what.substr(0, what.find('\n'))}, {"pass", false}};
    }
  };
  guarded("llama", [&] {  // LLaMA: full forward with a left-padded batch, fp32 and bf16.
    LlamaForCausalLM ref(small_llama());
    lego::nn::init_normal(*ref, 0.05, 11);
    ref->eval();
    auto ids = torch::randint(0, 512, {2, 48}, torch::kInt64);
    auto valid = torch::ones({2, 48}, torch::kBool);
    valid[0].narrow(0, 0, 10).fill_(false);
    auto run = [&](LlamaForCausalLM& m, torch::Device d) {
      AttentionContext ctx;
      ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(d);
      ctx.key_valid = valid.to(d);
      return m->forward(m->model->embed(ids.to(d)), ctx).narrow(1, 10, 38);
    };
    auto want = run(ref, cpu);
    auto dev = std::dynamic_pointer_cast<lego::llm::LlamaForCausalLMImpl>(ref->clone());
    LlamaForCausalLM on(dev);
    on->to(s.device);
    const double fp32 = max_rel(run(on, s.device), want);
    on->to(torch::kBFloat16);
    const double bf16 = max_rel(run(on, s.device).to(torch::kFloat32), want);
    j["llama_fp32"] = {{"max_rel", fp32}, {"bar", kFp32Bar}, {"pass", fp32 <= kFp32Bar}};
    j["llama_bf16"] = {{"max_rel", bf16}, {"bar", kBf16Bar}, {"pass", bf16 <= kBf16Bar}};

    // Decoding: the device's static/graph steps against the CPU's plain steps, fp32.
    LlamaForCausalLM fresh(std::dynamic_pointer_cast<lego::llm::LlamaForCausalLMImpl>(ref->clone()));
    fresh->to(s.device);
    auto prompt = torch::randint(0, 512, {1, 20}, torch::kInt64);
    auto plain = greedy_steps(ref, prompt, DecodeMode::Dynamic, 16);
    const auto mode = DecodeStep::graphs_available(s.device) ? DecodeMode::Graph : DecodeMode::Static;
    auto fast = greedy_steps(fresh, prompt.to(s.device), mode, 16);
    const double steps = max_rel(fast, plain);
    const bool same_tokens = torch::equal(fast.argmax(2), plain.argmax(2));
    j["decode_steps"] = {{"mode", mode == DecodeMode::Graph ? "cuda_graph" : "static"},
                         {"max_rel", steps}, {"same_greedy_tokens", same_tokens}, {"bar", kFp32Bar},
                         {"pass", steps <= kFp32Bar && same_tokens}};

    // The generator's next call replays the graph of its last one: the cache cleared, another prompt
    // prefilled into the same buffers, the same captured steps. They must give a fresh graph's logits.
    {
      const int64_t capacity = 48;
      KvCache cache(fresh->options(), 1, capacity, torch::TensorOptions().dtype(torch::kFloat32).device(s.device));
      DecodeStep decoder(fresh, cache, torch::Tensor(), mode);
      (void)decode_greedy(fresh, cache, decoder, prompt.to(s.device), 16);
      cache.clear();
      auto other = torch::randint(0, 512, {1, 12}, torch::kInt64).to(s.device);
      auto reused = decode_greedy(fresh, cache, decoder, other, 20);
      auto first = greedy_steps(fresh, other, mode, 20, capacity);
      const double diff = max_rel(reused, first);
      const bool same = torch::equal(reused.argmax(2), first.argmax(2));
      j["decode_graph_reused"] = {{"mode", mode == DecodeMode::Graph ? "cuda_graph" : "static"},
                                  {"against", "a new graph over a new cache"}, {"max_rel", diff},
                                  {"same_greedy_tokens", same}, {"bar", 1e-6}, {"pass", diff <= 1e-6 && same}};
    }

    // bf16, what the decode benchmark runs: the graph's steps (fused kernels on CUDA) against the plain
    // eager steps, both on the device.
    auto on_device_bf16 = [&] {
      LlamaForCausalLM copy(std::dynamic_pointer_cast<lego::llm::LlamaForCausalLMImpl>(ref->clone()));
      copy->to(s.device, torch::kBFloat16);
      return copy;
    };
    auto plain_bf16 = on_device_bf16();
    auto fast_bf16 = on_device_bf16();
    auto want16 = greedy_steps(plain_bf16, prompt.to(s.device), DecodeMode::Dynamic, 16);
    auto got16 = greedy_steps(fast_bf16, prompt.to(s.device), mode, 16);
    const double steps16 = max_rel(got16, want16);
    const bool same16 = torch::equal(got16.argmax(2), want16.argmax(2));
    // The one-row head product (on CUDA the bandwidth-bound kernel) against fp32 arithmetic on the same
    // bf16 inputs.
    auto row = torch::randn({1, 1, 256}, torch::TensorOptions().dtype(torch::kBFloat16).device(s.device));
    auto head = plain_bf16->logits(row).to(torch::kFloat32);
    auto exact = torch::matmul(row.to(torch::kFloat32), plain_bf16->lm_head->weight.to(torch::kFloat32).t());
    const double head_err = max_rel(head, exact);
    j["head_one_row_bf16"] = {{"max_rel", head_err}, {"bar", 1e-2}, {"pass", head_err <= 1e-2}};
    j["decode_steps_bf16"] = {{"mode", mode == DecodeMode::Graph ? "cuda_graph" : "static"},
                              {"against", "plain eager steps on the same device, bf16"},
                              {"max_rel", steps16}, {"same_greedy_tokens", same16}, {"bar", 2e-2},
                              {"pass", steps16 <= 2e-2 && same16}};
  });
  guarded("encoders", [&] {  // CLIP vision tower (patch convolution, pre-norm blocks) and the BLIP-2 Q-Former with its projector.
    auto opts = lego::nn::ClipVisionOptions().image_size(56).patch_size(14).width(128).layers(3).heads(4).mlp_dim(512);
    lego::nn::ClipVisionTransformer vit(opts);
    lego::nn::init_normal(*vit, 0.05, 12);
    vit->eval();
    auto pixels = torch::randn({2, 3, 56, 56});
    auto want = vit->hidden_state(pixels, -2);
    vit->to(s.device);
    const double v = max_rel(vit->hidden_state(pixels.to(s.device), -2), want);
    j["clip_vision_fp32"] = {{"max_rel", v}, {"bar", kFp32Bar}, {"pass", v <= kFp32Bar}};

    auto qopts = lego::nn::QFormerOptions().hidden(128).heads(4).intermediate(256).layers(2).encoder_width(128);
    lego::nn::QFormer qformer(qopts);
    lego::nn::Projector projector(lego::nn::ProjectorOptions(128, 256));
    lego::nn::init_normal(*qformer, 0.05, 13);
    lego::nn::init_normal(*projector, 0.05, 14);
    auto queries = torch::randn({2, 8, 128});
    auto states = torch::randn({2, 17, 128});
    auto qwant = projector(qformer(queries, states));
    qformer->to(s.device);
    projector->to(s.device);
    const double q = max_rel(projector(qformer(queries.to(s.device), states.to(s.device))), qwant);
    j["qformer_projector_fp32"] = {{"max_rel", q}, {"bar", kFp32Bar}, {"pass", q <= kFp32Bar}};
  });
  guarded("checkpointed_gradients", [&] {  // Training: checkpointed forward under bf16 autocast gives the same gradients as the plain one.
    torch::AutoGradMode grad(true);
    LlamaForCausalLM m(small_llama());
    lego::nn::init_normal(*m, 0.05, 15);
    m->to(s.device);
    auto ids = torch::randint(0, 512, {2, 64}, torch::TensorOptions().dtype(torch::kInt64).device(s.device));
    AttentionContext ctx;
    ctx.positions = torch::arange(64, torch::TensorOptions().dtype(torch::kInt64).device(s.device)).unsqueeze(0).expand({2, 64});
    auto grads = [&](bool checkpointed) {
      m->zero_grad();
      torch::Tensor loss;
      {
        const bool autocast = s.device.is_cuda();
        at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
        at::autocast::set_autocast_enabled(at::kCUDA, autocast);
        auto embeds = m->model->embed(ids);
        const auto in = m->model->prepare(ctx, 64, embeds.scalar_type());
        auto hidden = checkpointed ? m->model->forward_checkpointed(embeds, ctx, in) : m->model->forward(embeds, ctx);
        auto logits = m->logits(hidden).to(torch::kFloat32);
        loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, 63).reshape({-1, 512}),
                                                    ids.narrow(1, 1, 63).reshape({-1}));
        at::autocast::set_autocast_enabled(at::kCUDA, false);
        at::autocast::clear_cache();
        loss.backward();
      }
      std::vector<torch::Tensor> g;
      for (auto& p : m->parameters()) g.push_back(p.grad().to(torch::kCPU).clone());
      return g;
    };
    const auto plain = grads(false);
    const auto checkpointed = grads(true);
    double worst = 0;
    for (size_t i = 0; i < plain.size(); ++i) worst = std::max(worst, max_rel(checkpointed[i], plain[i]));
    // Under autocast both run the same bf16 kernels on the same inputs, so they agree to fp32 rounding.
    j["checkpointed_gradients"] = {{"max_rel", worst}, {"bar", 1e-3}, {"pass", worst <= 1e-3},
                                   {"autocast", s.device.is_cuda() ? "bf16" : "off"}};
  });
  bool all = true;
  for (auto& [k, v] : j.items()) all = all && v.value("pass", false);
  j["all_pass"] = all;
  return j;
}

// ---------------------------------------------------------------------------------------------------------
json decode(const Settings& s, double copy_gb_per_s) {
  const auto dtype = s.device.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  // LLaMA-2 7B's shape; the quick run's is tiny.
  auto options = s.quick ? LlamaOptions(1000, 128, 344, 2, 4).max_position(512)
                         : LlamaOptions(32000, 4096, 11008, 32, 32).max_position(4096);
  const int64_t prompt_len = 32;
  const int64_t new_tokens = s.quick ? 32 : 256;
  LlamaForCausalLM m(options);
  randomize_on(*m, torch::TensorOptions().dtype(dtype).device(s.device), 0.02);
  m->eval();
  double weight_bytes = 0;
  for (auto& p : m->named_parameters(true)) {
    if (p.key() != "model.embed_tokens.weight") weight_bytes += static_cast<double>(p.value().nbytes());
  }
  json j = {{"shape", {{"hidden", options.hidden_size()}, {"layers", options.num_layers()},
                       {"intermediate", options.intermediate_size()}, {"vocab", options.vocab_size()}}},
            {"dtype", dtype == torch::kBFloat16 ? "bf16" : "fp32"}, {"batch", 1}, {"prompt_tokens", prompt_len},
            {"new_tokens", new_tokens}, {"weight_bytes_per_token", weight_bytes}};
  const double roofline = copy_gb_per_s * 1e9 / weight_bytes;
  j["roofline_tokens_per_s"] = roofline;

  auto run = [&](DecodeMode mode) {
    torch::NoGradGuard no_grad;
    auto prompt = torch::randint(0, options.vocab_size(), {1, prompt_len}, torch::kInt64).to(s.device);
    KvCache cache(options, 1, prompt_len + new_tokens, torch::TensorOptions().dtype(dtype).device(s.device));
    AttentionContext ctx;
    ctx.positions = torch::arange(prompt_len, torch::TensorOptions().dtype(torch::kInt64).device(s.device)).unsqueeze(0);
    ctx.cache = &cache;
    auto logits = m->forward(m->model->embed(prompt), ctx).select(1, prompt_len - 1);
    DecodeStep decoder(m, cache, torch::Tensor(), mode);
    // As the generator does: the logits come to the host each step, where the token is chosen. The first
    // two steps (a graph's warm-up and capture) are timed apart from the steady state.
    auto one = [&](int64_t t) {
      auto next = std::get<1>(logits.to(torch::kCPU, torch::kFloat32).max(1));
      logits = decoder.step(next, torch::full({1}, prompt_len + t, torch::kInt64));
    };
    sync(s.device);
    const auto t0 = Clock::now();
    one(0);
    one(1);
    (void)logits.to(torch::kCPU);
    const double first = seconds_since(t0);
    const auto t1 = Clock::now();
    for (int64_t t = 2; t < new_tokens; ++t) one(t);
    (void)logits.to(torch::kCPU);
    const double secs = seconds_since(t1);
    const double tps = static_cast<double>(new_tokens - 2) / secs;
    return json{{"tokens_per_s", tps}, {"ms_per_token", 1e3 * secs / static_cast<double>(new_tokens - 2)},
                {"first_two_steps_ms", 1e3 * first}, {"roofline_percent", 100.0 * tps / roofline}};
  };
  auto guarded = [&](DecodeMode mode) {
    try {
      return run(mode);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      return json{{"error", what.substr(0, what.find('\n'))}};
    }
  };
  // The same graph with each token chosen on the device (greedy argmax) and fed back without a host
  // round trip: the GPU-bound rate, what the graph itself sustains.
  auto device_loop = [&] {
    torch::NoGradGuard no_grad;
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(s.device);
    auto prompt = torch::randint(0, options.vocab_size(), {1, prompt_len}, i64);
    KvCache cache(options, 1, prompt_len + new_tokens, torch::TensorOptions().dtype(dtype).device(s.device));
    AttentionContext ctx;
    ctx.positions = torch::arange(prompt_len, i64).unsqueeze(0);
    ctx.cache = &cache;
    auto logits = m->forward(m->model->embed(prompt), ctx).select(1, prompt_len - 1);
    DecodeStep decoder(m, cache, torch::Tensor(), DecodeMode::Graph);
    auto positions = torch::arange(prompt_len, prompt_len + new_tokens, i64);
    for (int64_t t = 0; t < 2; ++t) logits = decoder.step(logits.argmax(-1), positions.narrow(0, t, 1));
    sync(s.device);
    const auto t0 = Clock::now();
    for (int64_t t = 2; t < new_tokens; ++t) logits = decoder.step(logits.argmax(-1), positions.narrow(0, t, 1));
    sync(s.device);
    const double secs = seconds_since(t0);
    const double tps = static_cast<double>(new_tokens - 2) / secs;
    return json{{"tokens_per_s", tps}, {"ms_per_token", 1e3 * secs / static_cast<double>(new_tokens - 2)},
                {"roofline_percent", 100.0 * tps / roofline}};
  };
  j["eager"] = guarded(DecodeMode::Dynamic);
  if (DecodeStep::graphs_available(s.device)) {
    j["cuda_graph"] = guarded(DecodeMode::Graph);
    try {
      j["cuda_graph_tokens_on_device"] = device_loop();
    } catch (const std::exception& e) {
      const std::string what = e.what();
      j["cuda_graph_tokens_on_device"] = json{{"error", what.substr(0, what.find('\n'))}};
    }
  } else {
    j["static_eager"] = guarded(DecodeMode::Static);
    j["cuda_graph"] = "not available: " + std::string(s.device.is_cuda() ? "built without LEGO_WITH_CUDA" : "CPU device");
  }
  return j;
}

// Dense bf16 peak of the datasheet (no sparsity) for the GPUs we know; 0 where unknown.
double datasheet_peak(const std::string& name) {
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989.4e12;
  if (name.find("A100") != std::string::npos) return 312e12;
  return 0;
}

// `bf16_weights`: the model in bf16 and AdamW on fp32 master copies (lego::train::MasterWeights, as lego
// train's bf16); otherwise fp32 weights under bf16 autocast (on CUDA; plain fp32 on a CPU).
json train(const Settings& s, const std::string& gpu_name, double measured_peak, bool bf16_weights) {
  // A 1.3B-shaped LLaMA (2048 wide, 24 layers); the quick run's is tiny.
  auto options = s.quick ? LlamaOptions(1000, 128, 344, 2, 4).max_position(512)
                         : LlamaOptions(32000, 2048, 5504, 24, 16).max_position(2048);
  const int64_t batch = s.quick ? 2 : 8;
  const int64_t seq = s.quick ? 64 : 2048;
  const int warmup = s.quick ? 1 : 2;
  const int timed = s.quick ? 2 : 5;
  LlamaForCausalLM m(options);
  const auto weight_dtype = bf16_weights ? torch::kBFloat16 : torch::kFloat32;
  randomize_on(*m, torch::TensorOptions().dtype(weight_dtype).device(s.device), 0.02);
  m->train();
  const auto params = m->parameters();
  lego::train::MasterWeights masters(params, std::vector<bool>(params.size(), true));
  torch::optim::AdamW optimizer(masters.stepped(), torch::optim::AdamWOptions(1e-5).weight_decay(0.0));
  const bool autocast = !bf16_weights && s.device.is_cuda();
  const auto compute_dtype = bf16_weights || autocast ? torch::kBFloat16 : torch::kFloat32;
  const double parameter_count = options.parameter_count();
  const double embedding = static_cast<double>(options.vocab_size() * options.hidden_size());
  // PaLM's count (its appendix B): 6 N per token for the matrices (N without the input embedding table) plus
  // 12 L H T for attention. The recomputation of checkpointing is not counted: it is not model work.
  const double tokens = static_cast<double>(batch * seq);
  const double flops = tokens * (6.0 * (parameter_count - embedding) + 12.0 * static_cast<double>(options.num_layers()) *
                                                                   static_cast<double>(options.hidden_size()) *
                                                                   static_cast<double>(seq));
  auto ids = torch::randint(0, options.vocab_size(), {batch, seq}, torch::TensorOptions().dtype(torch::kInt64).device(s.device));
  AttentionContext ctx;
  ctx.positions = torch::arange(seq, torch::TensorOptions().dtype(torch::kInt64).device(s.device)).unsqueeze(0).expand({batch, seq});
  // Phase times of one extra step, synchronised between phases (where the time goes).
  json phases;
  auto mark = [&](const char* name, Clock::time_point& t) {
    sync(s.device);
    phases[name] = seconds_since(t);
    t = Clock::now();
  };
  bool timing_phases = false;
  auto step = [&] {
    auto t = Clock::now();
    optimizer.zero_grad();
    for (auto p : params) p.mutable_grad() = torch::Tensor();
    torch::Tensor loss;
    {
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
      at::autocast::set_autocast_enabled(at::kCUDA, autocast);
      auto embeds = m->model->embed(ids);
      const auto in = m->model->prepare(ctx, seq, compute_dtype);
      auto hidden = m->model->forward_checkpointed(embeds, ctx, in);
      if (timing_phases) mark("layers_forward_s", t);
      auto logits = m->logits(hidden).to(torch::kFloat32);
      loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, seq - 1).reshape({-1, options.vocab_size()}),
                                                  ids.narrow(1, 1, seq - 1).reshape({-1}));
      if (timing_phases) mark("head_and_loss_forward_s", t);
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
      loss.backward();
      if (timing_phases) mark("backward_with_recompute_s", t);
    }
    masters.take_gradients();
    torch::nn::utils::clip_grad_norm_(masters.stepped(), 1.0);
    if (timing_phases) mark("clip_s", t);
    optimizer.step();
    masters.write_back();
    if (timing_phases) mark("optimizer_s", t);
    return loss;
  };
  for (int i = 0; i < warmup; ++i) (void)step();
  sync(s.device);
  const auto t0 = Clock::now();
  torch::Tensor loss;
  for (int i = 0; i < timed; ++i) loss = step();
  sync(s.device);
  const double secs = seconds_since(t0) / timed;
  timing_phases = true;
  (void)step();
  json j = {{"shape", {{"hidden", options.hidden_size()}, {"layers", options.num_layers()},
                       {"intermediate", options.intermediate_size()}, {"vocab", options.vocab_size()},
                       {"parameters", parameter_count}}},
            {"batch", batch}, {"seq", seq},
            {"precision", bf16_weights ? "bf16 weights and gradients, fp32 master copies (train.precision = bf16)"
                          : autocast   ? "bf16 autocast over fp32 weights (train.precision = bf16-autocast)"
                                       : "fp32"},
            {"activation_checkpointing", true}, {"optimizer", "AdamW"}, {"step_s", secs},
            {"tokens_per_s", tokens / secs}, {"model_flops_per_step", flops}, {"loss", loss.item<double>()}};
  const double achieved = flops / secs;
  j["achieved_tflop_per_s"] = achieved / 1e12;
  if (const double peak = datasheet_peak(gpu_name); peak > 0) {
    j["mfu_percent"] = 100.0 * achieved / peak;
    j["peak_tflop_per_s"] = peak / 1e12;
    j["peak_source"] = "datasheet, dense bf16";
  } else {
    j["mfu_percent"] = 100.0 * achieved / measured_peak;
    j["peak_tflop_per_s"] = measured_peak / 1e12;
    j["peak_source"] = "measured matrix product (no datasheet figure for this device)";
  }
  j["percent_of_measured_matmul"] = 100.0 * achieved / measured_peak;
  j["phases_of_one_more_step"] = phases;
  return j;
}

// Runs one section; a failure is recorded in its place and the others still run.
void section(json& out, const std::string& name, const std::function<json()>& body) {
  const auto t0 = Clock::now();
  std::cerr << "gpu_check: " << name << " ..." << std::endl;
  try {
    out[name] = body();
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (const auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    out[name] = {{"error", what}};
  }
  out[name]["seconds"] = seconds_since(t0);
  std::cerr << "gpu_check: " << name << ": " << out[name].dump() << std::endl;
}

void write_atomically(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f.flush()) throw std::runtime_error(tmp + ": cannot write");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  std::filesystem::path out_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      s.quick = true;
    } else if ((arg == "--device" || arg == "--out") && i + 1 < argc) {
      const std::string value = argv[++i];
      if (arg == "--out") {
        out_path = value;
      } else {
        try {
          s.device = torch::Device(value);
        } catch (const std::exception&) {
          std::cerr << "gpu_check: --device '" << value << "': expected cpu, cuda or cuda:N\n";
          return 2;
        }
      }
    } else {
      std::cerr << "usage: gpu_check --device cpu|cuda[:N] --out results.json [--quick]\n";
      return 2;
    }
  }
  if (out_path.empty()) {
    std::cerr << "gpu_check: --out is required\n";
    return 2;
  }
  if (s.device.is_cuda() && !torch::cuda::is_available()) {
    std::cerr << "gpu_check: --device " << s.device.str() << " but CUDA is not available"
#ifndef LEGO_WITH_CUDA
              << " (this build has LEGO_WITH_CUDA=OFF)"
#endif
              << "\n";
    return 2;
  }
  torch::manual_seed(0);
  json results;
  section(results, "device", [&] { return device_info(s); });
  section(results, "bandwidth", [&] { return bandwidth(s); });
  section(results, "matmul", [&] { return matmul_peak(s); });
  section(results, "parity", [&] { return parity(s); });
  section(results, "decode", [&] { return decode(s, results["bandwidth"].value("gb_per_s", 1.0)); });
  section(results, "train", [&] {
    return train(s, results["device"].value("name", std::string()),
                 results["matmul"].value("tflop_per_s", 1.0) * 1e12, true);
  });
  section(results, "train_autocast", [&] {
    return train(s, results["device"].value("name", std::string()),
                 results["matmul"].value("tflop_per_s", 1.0) * 1e12, false);
  });
  write_atomically(out_path, results.dump(2) + "\n");
  bool ok = results["parity"].value("all_pass", false);
  for (const char* name : {"device", "bandwidth", "matmul", "parity", "decode", "train", "train_autocast"}) {
    ok = ok && !results[name].contains("error");
  }
  std::cerr << "gpu_check: wrote " << out_path.string() << (ok ? "" : " (with failures)") << std::endl;
  return ok ? 0 : 1;
}
