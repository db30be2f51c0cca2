#include "lego/generate/generator.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <optional>
#include <string>

#include "lego/llm/decode_step.h"
#include "lego/sdk/error.h"
#include "lego/text/incremental_decoder.h"
#include "rows.h"

namespace lego::generate {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

void SamplingOptions::validate() const {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (max_new_tokens < 0) bad("max_new_tokens must be >= 0, got " + std::to_string(max_new_tokens));
  if (!(std::isfinite(temperature) && temperature >= 0)) bad("temperature must be a finite number >= 0, got " + std::to_string(temperature));
  // Below that, logits / temperature overflow float32 and softmax gives NaN; such a temperature is greedy anyway.
  if (temperature > 0 && temperature < 1e-6) bad("temperature must be 0 (greedy) or at least 1e-6, got " + std::to_string(temperature));
  if (top_k < 0) bad("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) bad("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0)) {
    bad("repetition_penalty must be a finite number > 0, got " + std::to_string(repetition_penalty));
  }
  for (const auto& s : stop) {
    if (s.empty()) bad("stop strings must not be empty");
  }
}

torch::Tensor process_logits(const torch::Tensor& logits, const torch::Tensor& history, const SamplingOptions& o) {
  auto scores = logits;
  if (o.repetition_penalty != 1.0 && history.numel() > 0) {
    auto seen = scores.gather(1, history);
    seen = torch::where(seen < 0, seen * o.repetition_penalty, seen / o.repetition_penalty);
    scores = scores.scatter(1, history, seen);
  }
  if (o.temperature > 0 && o.temperature != 1.0) scores = scores / o.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (o.top_k > 0 && o.top_k < scores.size(1)) {
    auto kth = std::get<0>(scores.topk(o.top_k, 1)).narrow(1, o.top_k - 1, 1);
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    // Drop the lowest-probability tokens whose total mass stays within 1 - top_p; keep at least one.
    auto [sorted, order] = scores.sort(1, /*descending=*/false);
    auto cum = sorted.softmax(1).cumsum(1);
    auto drop_sorted = cum <= (1.0 - o.top_p);
    drop_sorted.narrow(1, sorted.size(1) - 1, 1).fill_(false);
    auto drop = drop_sorted.scatter(1, order, drop_sorted);
    scores = scores.masked_fill(drop, neg_inf);
  }
  return scores;
}

// A key/value cache, its padding mask and the decoding step over them, kept from one call to the next at
// fixed addresses: what a CUDA graph's replay reads and writes (DecodeMode::Graph), or the same static form
// run eagerly (DecodeMode::Static, chosen with LEGO_DECODE_FORM=static).
struct Generator::KeptDecoding {
  llm::KvCache cache;
  torch::Tensor key_valid;  // [batch, capacity] on the device; undefined when no row is padded
  llm::DecodeStep step;

  KeptDecoding(const llm::LlamaForCausalLM& model, int64_t batch, int64_t capacity, bool padded,
               torch::TensorOptions options, llm::DecodeMode mode)
      : cache(model->options(), batch, capacity, options),
        key_valid(padded ? torch::ones({batch, capacity}, options.dtype(torch::kBool)) : torch::Tensor()),
        step(model, cache, key_valid, mode) {}

  // Whether a call that needs `capacity` slots can run on this cache and step: same mode, rows, padding,
  // dtype and device, and a cache long enough but not so long that attending its unused slots costs more
  // than a new capture.
  bool serves(int64_t batch, int64_t capacity, bool padded, const torch::TensorOptions& options,
              llm::DecodeMode mode) const {
    const auto& k = cache.layer_keys(0);
    return step.mode() == mode && cache.batch() == batch && key_valid.defined() == padded &&
           k.dtype() == options.dtype() && k.device() == options.device() && cache.capacity() >= capacity &&
           cache.capacity() <= 2 * capacity + 256;
  }
};

namespace {

// The form a call decodes in when the generator keeps its cache between calls: a CUDA graph where one can
// be captured, the static form run eagerly when LEGO_DECODE_FORM=static (on any device: the A/B of a graph
// against the arithmetic it replays, and how the CPU-only tests run the kept cache), else none (the dynamic
// form over a cache of the call's own).
std::optional<llm::DecodeMode> kept_mode(const SamplingOptions& options, const torch::Device& device) {
  if (const char* form = std::getenv("LEGO_DECODE_FORM"); form != nullptr && *form != '\0') {
    const std::string value(form);
    if (value == "static") return llm::DecodeMode::Static;
    if (value != "auto") {
      throw Error(ErrorKind::InvalidArgument, "LEGO_DECODE_FORM must be 'auto' or 'static', got '" + value + "'");
    }
  }
  if (options.cuda_graphs && llm::DecodeStep::graphs_available(device)) return llm::DecodeMode::Graph;
  return std::nullopt;
}

}  // namespace

Generator::Generator(llm::LlamaForCausalLM model, std::shared_ptr<const text::Tokenizer> tokenizer)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {
  if (!tokenizer_) throw Error(ErrorKind::InvalidArgument, "Generator: no tokenizer");
}

Generator::~Generator() = default;
Generator::Generator(Generator&&) noexcept = default;
Generator& Generator::operator=(Generator&&) noexcept = default;

std::pair<torch::Tensor, torch::Tensor> Generator::pad_batch(const std::vector<std::vector<int64_t>>& prompts) const {
  if (prompts.empty()) throw Error(ErrorKind::InvalidArgument, "generate: no prompts");
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw Error(ErrorKind::InvalidArgument, "generate: prompt " + std::to_string(i) + " is empty");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[i].size()));
  }
  const auto batch = static_cast<int64_t>(prompts.size());
  auto ids = torch::full({batch, longest}, tokenizer_->pad_id(), torch::kInt64);
  auto valid = torch::zeros({batch, longest}, torch::kBool);
  for (int64_t b = 0; b < batch; ++b) {
    const auto n = static_cast<int64_t>(prompts[b].size());
    ids[b].narrow(0, longest - n, n).copy_(torch::tensor(prompts[b], torch::kInt64));
    valid[b].narrow(0, longest - n, n).fill_(true);
  }
  return {ids, valid};
}

std::vector<GenerationOutput> Generator::generate(const std::vector<std::vector<int64_t>>& prompts,
                                                  const SamplingOptions& options, const StreamCallback& stream,
                                                  GenerationTimings* timings) {
  auto [ids, valid] = pad_batch(prompts);
  torch::NoGradGuard no_grad;
  const auto device = model_->model->embed_tokens->weight.device();
  check_context(ids.size(1));
  auto embeds = model_->model->embed(ids.to(device));
  return generate_from_embeddings(embeds, valid, ids, options, stream, timings);
}

torch::Tensor Generator::last_logits(const std::vector<std::vector<int64_t>>& prompts) {
  auto [ids, valid] = pad_batch(prompts);
  torch::NoGradGuard no_grad;
  const auto device = model_->model->embed_tokens->weight.device();
  check_context(ids.size(1));
  return last_logits(model_->model->embed(ids.to(device)), valid);
}

torch::Tensor Generator::last_logits(const torch::Tensor& embeds, const torch::Tensor& valid_in) {
  torch::NoGradGuard no_grad;
  const int64_t steps = embeds.size(1);
  check_context(steps);
  auto valid = valid_in.to(torch::kBool).cpu();
  llm::AttentionContext ctx;
  ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(embeds.device());
  if (!valid.all().item<bool>()) ctx.key_valid = valid.to(embeds.device());
  auto hidden = model_->model->forward(embeds, ctx);
  return model_->logits(hidden.narrow(1, steps - 1, 1)).squeeze(1).to(torch::kCPU, torch::kFloat32);
}

void Generator::check_context(int64_t prompt_tokens) const {
  if (prompt_tokens > model_->options().max_position()) {
    throw Error(ErrorKind::InvalidArgument, "prompt of " + std::to_string(prompt_tokens) +
                                                " tokens is longer than the model context of " +
                                                std::to_string(model_->options().max_position()));
  }
}

std::vector<GenerationOutput> Generator::generate_from_embeddings(const torch::Tensor& embeds,
                                                                  const torch::Tensor& valid_in,
                                                                  const torch::Tensor& prompt_ids,
                                                                  const SamplingOptions& options,
                                                                  const StreamCallback& stream,
                                                                  GenerationTimings* timings) {
  options.validate();
  torch::NoGradGuard no_grad;
  const auto device = embeds.device();
  const int64_t batch = embeds.size(0);
  const int64_t prompt_len = embeds.size(1);
  const int64_t context = model_->options().max_position();
  check_context(prompt_len);
  const int64_t max_new = std::min(options.max_new_tokens, context - prompt_len);
  const bool context_bound = max_new < options.max_new_tokens;

  auto valid = valid_in.to(torch::kBool).cpu();
  const bool padded = !valid.all().item<bool>();
  const int64_t needed = prompt_len + std::max<int64_t>(max_new, 1);
  const auto cache_options = torch::TensorOptions().dtype(embeds.dtype()).device(device);
  // On CUDA each step replays one captured graph, over a cache kept for the next call; elsewhere it is the
  // plain forward over the filled slots of a cache of the call's own.
  const auto mode = kept_mode(options, device);
  std::optional<llm::KvCache> own_cache;
  std::optional<llm::DecodeStep> own_step;
  torch::Tensor key_valid;
  bool kept = false;
  if (mode) {
    if (kept_ && kept_->serves(batch, needed, padded, cache_options, *mode)) {
      kept_->cache.clear();
      kept = true;
    } else {
      kept_.reset();  // the old cache's memory first
      // Rounded up, so that the next call's somewhat longer prompt or answer replays the same graph.
      const int64_t capacity = std::max(needed, std::min((needed + 127) / 128 * 128, context));
      kept_ = std::make_unique<KeptDecoding>(model_, batch, capacity, padded, cache_options, *mode);
    }
    key_valid = kept_->key_valid;
    if (padded) {
      key_valid.fill_(true);
      key_valid.narrow(1, 0, prompt_len).copy_(valid);
    }
  } else {
    own_cache.emplace(model_->options(), batch, needed, cache_options);
    if (padded) {
      key_valid = torch::ones({batch, needed}, torch::kBool);
      key_valid.narrow(1, 0, prompt_len).copy_(valid);
      key_valid = key_valid.to(device);
    }
  }
  auto& cache = mode ? kept_->cache : *own_cache;
  // A call that fails half-way leaves nothing kept for the next one (a failed capture would poison it).
  struct DropOnFailure {
    std::unique_ptr<KeptDecoding>& kept;
    int uncaught = std::uncaught_exceptions();
    ~DropOnFailure() {
      if (std::uncaught_exceptions() > uncaught) kept.reset();
    }
  } drop_on_failure{kept_};
  auto next_pos = valid.to(torch::kInt64).sum(1);  // [B] position of the first generated token

  std::vector<detail::RowState> rows;
  rows.reserve(batch);
  for (int64_t b = 0; b < batch; ++b) rows.emplace_back(tokenizer_);
  // History for the repetition penalty: prompt ids then generated ids, preallocated.
  torch::Tensor history;
  if (options.repetition_penalty != 1.0) {
    history = torch::full({batch, prompt_len + max_new}, tokenizer_->pad_id(), torch::kInt64);
    history.narrow(1, 0, prompt_len).copy_(prompt_ids.cpu());  // pads included, as in HF
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);

  auto t0 = Clock::now();
  llm::AttentionContext ctx;
  ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(device);
  ctx.key_valid = key_valid;
  ctx.cache = &cache;
  auto hidden = model_->model->forward(embeds, ctx);
  auto logits = model_->logits(hidden.narrow(1, prompt_len - 1, 1)).squeeze(1);
  if (timings != nullptr) {
    timings->kept_decoding = kept;
    timings->prompt_tokens = batch * prompt_len;
    timings->prefill_ms = ms_since(t0);
  }

  auto t1 = Clock::now();
  if (!mode) own_step.emplace(model_, cache, key_valid, llm::DecodeMode::Dynamic);
  auto& decoder = mode ? kept_->step : *own_step;
  int64_t steps = 0;
  if (timings != nullptr) timings->step_ms.clear();
  for (int64_t step = 0; step < max_new; ++step) {
    const auto step_start = Clock::now();
    auto next = detail::choose_tokens(logits, history.defined() ? history.narrow(1, 0, prompt_len + step) : torch::Tensor(),
                                      options, gen, step);
    if (history.defined()) history.select(1, prompt_len + step).copy_(next);
    ++steps;
    const auto* next_ids = next.data_ptr<int64_t>();
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      auto& r = rows[b];
      if (r.done) continue;
      detail::TextSink sink;
      if (stream) sink = [&stream, b](std::string_view piece) { stream(b, piece); };
      detail::accept_token(r, next_ids[b], options, tokenizer_->eos_id(), sink);
      all_done = all_done && r.done;
    }
    const bool last = all_done || step + 1 == max_new;
    if (!last) logits = decoder.step(next, next_pos + step);
    if (timings != nullptr) timings->step_ms.push_back(ms_since(step_start));
    if (last) break;
  }
  if (timings != nullptr) {
    timings->generated_tokens = batch * steps;
    timings->decode_ms = ms_since(t1);
  }

  std::vector<GenerationOutput> out;
  out.reserve(batch);
  for (size_t b = 0; b < rows.size(); ++b) {
    auto& r = rows[b];
    if (!r.done) {
      detail::TextSink sink;
      if (stream) sink = [&stream, b](std::string_view piece) { stream(static_cast<int64_t>(b), piece); };
      detail::end_row(r, context_bound ? "context" : "length", options, sink);
    }
    out.push_back({std::move(r.ids), std::move(r.text), std::move(r.reason)});
  }
  return out;
}

}  // namespace lego::generate
