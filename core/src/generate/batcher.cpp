#include "lego/generate/batcher.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>

#include "lego/llm/decode_step.h"
#include "lego/sdk/error.h"
#include "rows.h"

namespace lego::generate {

struct ContinuousBatcher::Row {
  Row(uint64_t i, Sequence s, std::shared_ptr<const text::Tokenizer> tokenizer)
      : id(i), seq(std::move(s)), state(std::move(tokenizer)), gen(at::make_generator<at::CPUGeneratorImpl>(seq.options.seed)) {}
  uint64_t id;
  Sequence seq;
  detail::RowState state;
  at::Generator gen;
  torch::Tensor history;  // [1, prompt + max_new] ids for the repetition penalty, or undefined
  int64_t prompt_len = 0;
  int64_t max_new = 0;
  bool context_bound = false;
  int64_t steps = 0;    // tokens chosen so far
  int64_t tokens = 0;   // slots of the row in its cache (prompt + tokens fed back)
  int64_t last_id = 0;  // the token to feed at the next batched step
  torch::Tensor logits;                // [1, V] float32 on the CPU: the next choice
  std::shared_ptr<llm::KvCache> own;   // the prefill's cache (shared by those prefilled together) until the row
  int64_t own_row = 0;                 // joins the batch cache; the row's index in it
  int64_t cache_row = -1;
  std::exception_ptr error;
};

ContinuousBatcher::ContinuousBatcher(llm::LlamaForCausalLM model, std::shared_ptr<const text::Tokenizer> tokenizer,
                                     int64_t max_batch)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), max_batch_(max_batch) {
  if (!tokenizer_) throw Error(ErrorKind::InvalidArgument, "ContinuousBatcher: no tokenizer");
  if (max_batch < 1) throw Error(ErrorKind::InvalidArgument, "ContinuousBatcher: max_batch must be >= 1, got " + std::to_string(max_batch));
}

ContinuousBatcher::~ContinuousBatcher() = default;

int64_t ContinuousBatcher::size() const { return static_cast<int64_t>(rows_.size()); }

uint64_t ContinuousBatcher::add(Sequence seq) {
  std::vector<Sequence> one;
  one.push_back(std::move(seq));
  return add_all(std::move(one)).front();
}

std::vector<uint64_t> ContinuousBatcher::add_all(std::vector<Sequence> seqs) {
  if (seqs.empty()) return {};
  const int64_t hidden = model_->options().hidden_size();
  const int64_t context = model_->options().max_position();
  if (size() + static_cast<int64_t>(seqs.size()) > max_batch_) {
    throw Error(ErrorKind::InvalidArgument, "ContinuousBatcher: the batch is full (" + std::to_string(max_batch_) + ")");
  }
  int64_t longest = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& seq = seqs[i];
    const std::string which = seqs.size() > 1 ? " (sequence " + std::to_string(i) + ")" : "";
    seq.options.validate();
    const auto& e = seq.embeds;
    if (!e.defined() || e.dim() != 3 || e.size(0) != 1 || e.size(1) < 1 || e.size(2) != hidden ||
        (i > 0 && (e.device() != seqs[0].embeds.device() || e.dtype() != seqs[0].embeds.dtype()))) {
      throw Error(ErrorKind::InvalidArgument, "ContinuousBatcher: a prompt's embeddings must be [1, T >= 1, " +
                                                  std::to_string(hidden) + "] on one device and dtype" + which);
    }
    if (static_cast<int64_t>(seq.prompt_ids.size()) != e.size(1)) {
      throw Error(ErrorKind::InvalidArgument, "ContinuousBatcher: " + std::to_string(seq.prompt_ids.size()) +
                                                  " prompt ids for " + std::to_string(e.size(1)) + " prompt embeddings" + which);
    }
    if (e.size(1) > context) {
      throw Error(ErrorKind::InvalidArgument, "prompt of " + std::to_string(e.size(1)) +
                                                  " tokens is longer than the model context of " + std::to_string(context) + which);
    }
    longest = std::max(longest, e.size(1));
  }
  torch::NoGradGuard no_grad;
  const auto batch = static_cast<int64_t>(seqs.size());
  const auto like = seqs[0].embeds;
  // The prefill: the prompts left-padded to one length, exactly as Generator runs a batch of prompts (for one
  // prompt, exactly its forward alone).
  auto embeds = batch == 1 ? like : torch::zeros({batch, longest, hidden}, like.options());
  auto valid = torch::zeros({batch, longest}, torch::kBool);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t t = seqs[b].embeds.size(1);
    if (batch > 1) embeds[b].narrow(0, longest - t, t).copy_(seqs[b].embeds[0]);
    valid[b].narrow(0, longest - t, t).fill_(true);
  }
  auto cache = std::make_shared<llm::KvCache>(model_->options(), batch, longest, like.options());
  llm::AttentionContext ctx;
  ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(like.device());
  if (batch > 1) ctx.key_valid = valid.to(like.device());
  ctx.cache = cache.get();
  auto hidden_states = model_->model->forward(embeds, ctx);
  auto logits = model_->logits(hidden_states.narrow(1, longest - 1, 1)).squeeze(1).to(torch::kCPU, torch::kFloat32);

  std::vector<uint64_t> ids;
  for (int64_t b = 0; b < batch; ++b) {
    auto row = std::make_unique<Row>(next_id_, std::move(seqs[b]), tokenizer_);
    const auto& o = row->seq.options;
    const int64_t prompt_len = static_cast<int64_t>(row->seq.prompt_ids.size());
    row->prompt_len = prompt_len;
    row->max_new = std::min(o.max_new_tokens, context - prompt_len);
    row->context_bound = row->max_new < o.max_new_tokens;
    if (o.repetition_penalty != 1.0) {
      row->history = torch::zeros({1, prompt_len + row->max_new}, torch::kInt64);
      row->history.narrow(1, 0, prompt_len).copy_(torch::tensor(row->seq.prompt_ids, torch::kInt64).view({1, prompt_len}));
    }
    row->logits = logits.narrow(0, b, 1);
    row->own = cache;
    row->own_row = b;
    row->tokens = prompt_len;
    row->seq.embeds = torch::Tensor();  // no longer needed
    stats_.prompt_tokens += prompt_len;
    rows_.push_back(std::move(row));
    ids.push_back(next_id_++);
  }
  dirty_ = true;
  return ids;
}

bool ContinuousBatcher::cancel(uint64_t id) {
  auto it = std::find_if(rows_.begin(), rows_.end(), [id](const auto& r) { return r->id == id; });
  if (it == rows_.end()) return false;
  rows_.erase(it);
  dirty_ = true;
  return true;
}

void ContinuousBatcher::rebuild() {
  std::vector<llm::KvCache::Row> sources;
  int64_t longest = 0, room = 1;
  for (const auto& r : rows_) {
    sources.push_back({r->own ? r->own.get() : cache_.get(), r->own ? r->own_row : r->cache_row, r->tokens});
    longest = std::max(longest, r->tokens);
    room = std::max(room, r->max_new - r->steps);
  }
  auto cache = std::make_unique<llm::KvCache>(llm::KvCache::gather(sources, longest + room));
  const auto batch = static_cast<int64_t>(rows_.size());
  auto valid = torch::ones({batch, cache->capacity()}, torch::kBool);
  for (int64_t b = 0; b < batch; ++b) {
    auto& r = *rows_[b];
    if (r.tokens < longest) valid[b].narrow(0, 0, longest - r.tokens).fill_(false);
    r.cache_row = b;
    r.own.reset();
  }
  cache_ = std::move(cache);
  key_valid_ = valid.to(cache_->layer_keys(0).device());
  dirty_ = false;
  ++stats_.rebuilds;
}

void ContinuousBatcher::step() {
  torch::NoGradGuard no_grad;
  // 1. Choose each row's next token; a row that ends leaves.
  std::vector<std::unique_ptr<Row>> finished;
  for (auto& r : rows_) {
    auto& o = r->seq.options;
    detail::TextSink sink;
    if (r->seq.on_text) sink = r->seq.on_text;
    try {
      if (r->steps < r->max_new) {
        auto history = r->history.defined() ? r->history.narrow(1, 0, r->prompt_len + r->steps) : torch::Tensor();
        const int64_t id = detail::choose_tokens(r->logits, history, o, r->gen, r->steps).item<int64_t>();
        if (r->history.defined()) r->history[0][r->prompt_len + r->steps] = id;
        ++r->steps;
        ++stats_.generated_tokens;
        detail::accept_token(r->state, id, o, tokenizer_->eos_id(), sink);
        r->last_id = id;
      }
      if (!r->state.done && r->steps >= r->max_new) detail::end_row(r->state, r->context_bound ? "context" : "length", o, sink);
    } catch (...) {
      r->error = std::current_exception();
      r->state.done = true;
    }
    if (r->state.done) finished.push_back(std::move(r));
  }
  if (!finished.empty()) {
    rows_.erase(std::remove(rows_.begin(), rows_.end(), nullptr), rows_.end());
    dirty_ = true;
  }
  for (auto& r : finished) {
    if (r->seq.on_done) {
      r->seq.on_done({std::move(r->state.ids), std::move(r->state.text), std::move(r->state.reason)}, r->error);
    }
  }
  if (rows_.empty()) {
    cache_.reset();
    key_valid_ = torch::Tensor();
    dirty_ = false;
    return;
  }
  // 2. One batched step for the rows that go on.
  try {
    if (dirty_) rebuild();
    const auto batch = static_cast<int64_t>(rows_.size());
    auto ids = torch::empty({batch}, torch::kInt64);
    auto positions = torch::empty({batch}, torch::kInt64);
    for (int64_t b = 0; b < batch; ++b) {
      ids[b] = rows_[b]->last_id;
      positions[b] = rows_[b]->tokens;  // no padding in a row's own positions: its n-th token sits at n
    }
    llm::DecodeStep decoder(model_, *cache_, key_valid_, llm::DecodeMode::Dynamic);
    auto logits = decoder.step(ids, positions).to(torch::kCPU, torch::kFloat32);
    for (int64_t b = 0; b < batch; ++b) {
      rows_[b]->logits = logits.narrow(0, b, 1);
      ++rows_[b]->tokens;
    }
    ++stats_.steps;
  } catch (...) {
    auto error = std::current_exception();
    auto rows = std::move(rows_);
    rows_.clear();
    cache_.reset();
    dirty_ = false;
    for (auto& r : rows) {
      if (r->seq.on_done) r->seq.on_done({std::move(r->state.ids), std::move(r->state.text), "error"}, error);
    }
  }
}

}  // namespace lego::generate
