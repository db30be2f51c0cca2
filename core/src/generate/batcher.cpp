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
  int64_t own_row = 0;                 // is seated in the batch cache; the row's index in it
  int64_t cache_row = -1;              // the row's index in the batch cache once seated
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
  }
  torch::NoGradGuard no_grad;
  // Prompts of similar length are prefilled together, left-padded to one length exactly as Generator runs a
  // batch of prompts (a prompt alone: exactly its forward alone). Padding is computed as if it were
  // prompt, so a group takes the next prompt (longest first) only while its padding stays within a fifth
  // of its tokens: a 40-token prompt beside a 100-token one would cost more than its own forward.
  std::vector<size_t> order(seqs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].embeds.size(1) > seqs[b].embeds.size(1); });
  struct Prefilled {
    std::shared_ptr<llm::KvCache> cache;
    int64_t row = 0;
    torch::Tensor logits;  // [1, V] float32 on the CPU
  };
  std::vector<Prefilled> prefilled(seqs.size());
  for (size_t first = 0; first < order.size();) {
    const int64_t longest = seqs[order[first]].embeds.size(1);
    int64_t tokens = longest;
    size_t end = first + 1;
    for (; end < order.size(); ++end) {
      const int64_t t = seqs[order[end]].embeds.size(1);
      if (static_cast<int64_t>(end - first + 1) * longest * 5 > (tokens + t) * 6) break;
      tokens += t;
    }
    const auto batch = static_cast<int64_t>(end - first);
    const auto& like = seqs[order[first]].embeds;
    auto embeds = batch == 1 ? like : torch::zeros({batch, longest, hidden}, like.options());
    auto valid = torch::zeros({batch, longest}, torch::kBool);
    for (int64_t b = 0; b < batch; ++b) {
      const auto& e = seqs[order[first + static_cast<size_t>(b)]].embeds;
      const int64_t t = e.size(1);
      if (batch > 1) embeds[b].narrow(0, longest - t, t).copy_(e[0]);
      valid[b].narrow(0, longest - t, t).fill_(true);
    }
    auto cache = std::make_shared<llm::KvCache>(model_->options(), batch, longest, like.options());
    llm::AttentionContext ctx;
    ctx.positions = (valid.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(like.device());
    if (batch > 1) ctx.key_valid = valid.to(like.device());
    ctx.cache = cache.get();
    auto hidden_states = model_->model->forward(embeds, ctx);
    auto logits = model_->logits(hidden_states.narrow(1, longest - 1, 1)).squeeze(1).to(torch::kCPU, torch::kFloat32);
    for (int64_t b = 0; b < batch; ++b) prefilled[order[first + static_cast<size_t>(b)]] = {cache, b, logits.narrow(0, b, 1)};
    first = end;
  }

  std::vector<uint64_t> ids;
  for (size_t b = 0; b < seqs.size(); ++b) {
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
    row->logits = prefilled[b].logits;
    row->own = prefilled[b].cache;
    row->own_row = prefilled[b].row;
    row->tokens = prompt_len;
    row->seq.embeds = torch::Tensor();  // no longer needed
    stats_.prompt_tokens += prompt_len;
    longest_prompt_ = std::max(longest_prompt_, prompt_len);
    longest_answer_ = std::max(longest_answer_, row->max_new);
    rows_.push_back(std::move(row));
    ids.push_back(next_id_++);
  }
  return ids;
}

bool ContinuousBatcher::cancel(uint64_t id) {
  auto it = std::find_if(rows_.begin(), rows_.end(), [id](const auto& r) { return r->id == id; });
  if (it == rows_.end()) return false;
  if ((*it)->cache_row >= 0) free_rows_.push_back((*it)->cache_row);
  rows_.erase(it);
  return true;
}

// Seats the rows that joined since the last step: in free rows of the cache where they fit, else by a rebuild.
void ContinuousBatcher::seat() {
  std::vector<Row*> joining;
  for (const auto& r : rows_) {
    if (r->cache_row < 0) joining.push_back(r.get());
  }
  const auto live = static_cast<int64_t>(rows_.size());
  const bool sparse = cache_ && live * 3 < cache_->batch();  // mostly free rows: decoding them is waste
  if (joining.empty() && !sparse) return;
  bool fits = cache_ && !sparse && joining.size() <= free_rows_.size();
  for (const auto* r : joining) {
    fits = fits && r->tokens <= cache_->length() && cache_->length() + (r->max_new - r->steps) <= cache_->capacity();
  }
  if (!fits) {
    rebuild();
    return;
  }
  const int64_t length = cache_->length();
  for (auto* r : joining) {
    const int64_t b = free_rows_.back();
    cache_->place(b, {r->own.get(), r->own_row, r->tokens});
    auto valid = key_valid_[b];
    valid.narrow(0, 0, length - r->tokens).fill_(false);
    valid.narrow(0, length - r->tokens, cache_->capacity() - length + r->tokens).fill_(true);
    free_rows_.pop_back();
    r->cache_row = b;
    r->own.reset();
    ++stats_.placements;
  }
}

// A new cache for the rows there are, with spare rows and room for those still to come: half as many rows
// again (up to max_batch), a common length no shorter than the longest prompt seen, and room behind it for
// the longest answer seen on top of what the rows need. Without the memory for the spare, exactly the rows.
void ContinuousBatcher::rebuild() {
  std::vector<llm::KvCache::Row> sources;
  int64_t longest = 0, room = 1;
  for (const auto& r : rows_) {
    sources.push_back({r->cache_row < 0 ? r->own.get() : cache_.get(), r->cache_row < 0 ? r->own_row : r->cache_row, r->tokens});
    longest = std::max(longest, r->tokens);
    room = std::max(room, r->max_new - r->steps);
  }
  const auto live = static_cast<int64_t>(rows_.size());
  std::unique_ptr<llm::KvCache> cache;
  try {
    const int64_t batch = std::min(max_batch_, live + live / 2);
    const int64_t length = std::max(longest, longest_prompt_);
    cache = std::make_unique<llm::KvCache>(llm::KvCache::gather(sources, length + room + longest_answer_, batch, length));
  } catch (const Error&) {
    cache = std::make_unique<llm::KvCache>(llm::KvCache::gather(sources, longest + room));
  }
  const int64_t length = cache->length();
  auto valid = torch::ones({cache->batch(), cache->capacity()}, torch::kBool);
  for (int64_t b = 0; b < live; ++b) {
    auto& r = *rows_[b];
    if (r.tokens < length) valid[b].narrow(0, 0, length - r.tokens).fill_(false);
    r.cache_row = b;
    r.own.reset();
  }
  free_rows_.clear();
  for (int64_t b = cache->batch() - 1; b >= live; --b) free_rows_.push_back(b);
  cache_ = std::move(cache);
  key_valid_ = valid.to(cache_->layer_keys(0).device());
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
    if (r->state.done) {
      if (r->cache_row >= 0) free_rows_.push_back(r->cache_row);
      finished.push_back(std::move(r));
    }
  }
  if (!finished.empty()) rows_.erase(std::remove(rows_.begin(), rows_.end(), nullptr), rows_.end());
  for (auto& r : finished) {
    if (r->seq.on_done) {
      r->seq.on_done({std::move(r->state.ids), std::move(r->state.text), std::move(r->state.reason)}, r->error);
    }
  }
  if (rows_.empty()) {
    cache_.reset();
    key_valid_ = torch::Tensor();
    free_rows_.clear();
    return;
  }
  // 2. One batched step for the rows that go on; free rows of the cache decode token 0 at position 0.
  try {
    seat();
    const auto batch = cache_->batch();
    auto ids = torch::zeros({batch}, torch::kInt64);
    auto positions = torch::zeros({batch}, torch::kInt64);
    auto* id_at = ids.data_ptr<int64_t>();
    auto* position_at = positions.data_ptr<int64_t>();
    for (const auto& r : rows_) {
      id_at[r->cache_row] = r->last_id;
      position_at[r->cache_row] = r->tokens;  // no padding in a row's own positions: its n-th token sits at n
    }
    llm::DecodeStep decoder(model_, *cache_, key_valid_, llm::DecodeMode::Dynamic);
    auto logits = decoder.step(ids, positions).to(torch::kCPU, torch::kFloat32);
    for (auto& r : rows_) {
      r->logits = logits.narrow(0, r->cache_row, 1);
      ++r->tokens;
    }
    ++stats_.steps;
  } catch (...) {
    auto error = std::current_exception();
    auto rows = std::move(rows_);
    rows_.clear();
    cache_.reset();
    free_rows_.clear();
    for (auto& r : rows) {
      if (r->seq.on_done) r->seq.on_done({std::move(r->state.ids), std::move(r->state.text), "error"}, error);
    }
  }
}

}  // namespace lego::generate
