#include "lego/text/incremental_decoder.h"

#include <string_view>

#include "lego/sdk/error.h"

namespace lego::text {
namespace {

// "▁", sentencepiece's space, in UTF-8.
constexpr std::string_view kSpacePiece = "\xE2\x96\x81";

// Bytes of the UTF-8 character that `lead` starts; 0 for a continuation or invalid byte.
int utf8_length(int lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC0 && lead < 0xE0) return 2;
  if (lead >= 0xE0 && lead < 0xF0) return 3;
  if (lead >= 0xF0 && lead < 0xF8) return 4;
  return 0;
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(std::shared_ptr<const Tokenizer> tokenizer)
    : tokenizer_(std::move(tokenizer)) {
  if (!tokenizer_) throw Error(ErrorKind::InvalidArgument, "IncrementalDecoder: no tokenizer");
}

bool IncrementalDecoder::open_utf8_tail() const {
  // A character has at most 4 bytes, so only the last 3 byte pieces can be one still missing bytes.
  // Holding more than needed is safe (the text comes out later); holding less is not.
  int bytes[3];
  int n = 0;
  for (size_t i = window_.size(); i > read_ && n < 3; --i) {
    const int b = tokenizer_->byte_value(window_[i - 1]);
    if (b < 0) break;
    bytes[n++] = b;  // bytes[k - 1] is the k-th byte from the end
  }
  for (int k = 1; k <= n; ++k) {
    if (utf8_length(bytes[k - 1]) <= k) continue;
    bool continued = true;
    for (int j = 1; j < k; ++j) continued = continued && (bytes[j - 1] & 0xC0) == 0x80;
    if (continued) return true;
  }
  return false;
}

std::string IncrementalDecoder::push(int64_t id) {
  const auto& tok = *tokenizer_;
  if (id < 0 || id >= tok.vocab_size()) {
    throw Error(ErrorKind::InvalidArgument, "tokenizer: id " + std::to_string(id) +
                                                " is outside the vocabulary of " +
                                                std::to_string(tok.vocab_size()));
  }
  // decode() drops these without ending a run of pieces, so leaving them out changes no text.
  if (id == tok.bos_id() || id == tok.eos_id() || id == tok.pad_id()) return {};
  window_.push_back(id);
  if (open_utf8_tail()) return {};

  const std::string text = tok.decode(window_);
  std::string out = text.substr(prefix_bytes_);
  // The ids just read become the window's prefix, unless alone they would leave sentencepiece still
  // ready to drop the next piece's leading space: they write nothing and do not start with a space
  // piece (control pieces). Then the old prefix stays.
  std::vector<int64_t> next(window_.begin() + static_cast<std::ptrdiff_t>(read_),
                            window_.end());
  std::string next_text = tok.decode(next);
  if (!next_text.empty() || tok.piece(next.front()).starts_with(kSpacePiece)) {
    window_ = std::move(next);
    prefix_bytes_ = next_text.size();
  } else {
    prefix_bytes_ = text.size();
  }
  read_ = window_.size();
  return out;
}

std::string IncrementalDecoder::pending_text() const {
  if (read_ == window_.size()) return {};
  return tokenizer_->decode(window_).substr(prefix_bytes_);
}

}  // namespace lego::text
