#include "rows.h"

#include <torch/torch.h>

#include <cmath>

#include "lego/sdk/error.h"

namespace lego::generate::detail {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that much text
// must wait before it is streamed.
size_t held_back(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

// Start of the earliest stop string in `text` that ends past `old_size`; npos when none does. Text
// before `old_size` was searched already: only its last (stop size - 1) bytes can start a match.
size_t find_stop(const std::string& text, size_t old_size, const std::vector<std::string>& stops) {
  size_t first = std::string::npos;
  for (const auto& s : stops) {
    const size_t from = old_size >= s.size() ? old_size - s.size() + 1 : 0;
    first = std::min(first, text.find(s, from));
  }
  return first;
}

// Appends text that became final to a row; a stop string in it ends the row and cuts the text.
void append_text(RowState& r, const std::string& piece, const std::vector<std::string>& stops) {
  if (piece.empty()) return;
  const size_t old_size = r.text.size();
  r.text += piece;
  const size_t at = find_stop(r.text, old_size, stops);
  if (at != std::string::npos) {
    r.text.resize(at);
    r.done = true;
    r.reason = "stop";
  }
}

void flush(RowState& r, const SamplingOptions& o, const TextSink& sink) {
  if (!sink) return;
  const size_t ready = r.done ? r.text.size() : r.text.size() - held_back(r.text, o.stop);
  if (ready > r.streamed) {
    sink(std::string_view(r.text).substr(r.streamed, ready - r.streamed));
    r.streamed = ready;
  }
}

}  // namespace

torch::Tensor choose_tokens(const torch::Tensor& logits, const torch::Tensor& history, const SamplingOptions& options,
                            at::Generator& gen, int64_t step, int64_t first_row) {
  auto scores = logits.to(torch::kCPU, torch::kFloat32);
  // NaN or infinite logits (broken weights, an overflow in fp16) would decode to nothing or crash the
  // sampler; say where they appeared instead. The row maxima show both (max treats NaN as largest), and
  // the greedy path needs them anyway.
  auto [top, top_id] = scores.max(1);
  const float* top_values = top.data_ptr<float>();
  for (int64_t b = 0; b < scores.size(0); ++b) {
    if (!std::isfinite(top_values[b])) {
      throw Error(ErrorKind::Format, "the model produced non-finite logits at generation step " + std::to_string(step) +
                                         " (batch row " + std::to_string(first_row + b) +
                                         "): its weights or the inputs hold NaN or infinite values");
    }
  }
  if (options.temperature == 0 && options.repetition_penalty == 1.0) return top_id;
  scores = process_logits(scores, history, options);
  if (options.temperature == 0) return scores.argmax(1);
  return scores.softmax(1).multinomial(1, /*replacement=*/false, gen).squeeze(1);
}

void accept_token(RowState& r, int64_t id, const SamplingOptions& o, int64_t eos_id, const TextSink& sink) {
  if (r.done) return;
  if (o.stop_at_eos && id == eos_id) {
    r.done = true;
    r.reason = "eos";
    append_text(r, r.decoder.pending_text(), o.stop);  // bytes of an unfinished character
  } else {
    r.ids.push_back(id);
    append_text(r, r.decoder.push(id), o.stop);
  }
  flush(r, o, sink);
}

void end_row(RowState& r, const std::string& reason, const SamplingOptions& o, const TextSink& sink) {
  if (r.done) return;
  r.reason = reason;
  append_text(r, r.decoder.pending_text(), o.stop);
  r.done = true;
  flush(r, o, sink);
}

}  // namespace lego::generate::detail
