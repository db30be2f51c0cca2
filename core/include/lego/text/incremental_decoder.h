// IncrementalDecoder: the text of a growing sequence of token ids, id by id (DESIGN.md, core/text).
//
// Concatenating what push() returns, then pending_text(), gives exactly Tokenizer::decode of the
// ids so far, and a push costs the same however long the sequence is: only a short window of recent
// ids is decoded. The window starts one emission back, so sentencepiece's dropping of a leading
// space hits an id whose text is already out; text waits while the ids end in byte pieces that may
// be the first bytes of a UTF-8 character (decode writes U+FFFD until the character is complete).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lego/text/tokenizer.h"

namespace lego::text {

class IncrementalDecoder {
 public:
  // Throws InvalidArgument when `tokenizer` is null.
  explicit IncrementalDecoder(std::shared_ptr<const Tokenizer> tokenizer);

  // Appends `id` and returns the text that became final with it (often one piece, possibly empty).
  // Throws InvalidArgument, and appends nothing, for an id outside the vocabulary.
  std::string push(int64_t id);

  // The text of the ids not yet returned by push(), as decode() writes it now: what an unfinished
  // sequence ends with. It may change with the next ids, so it is not consumed.
  std::string pending_text() const;

 private:
  // Whether the window ends in byte pieces that are the start of a UTF-8 character.
  bool open_utf8_tail() const;

  std::shared_ptr<const Tokenizer> tokenizer_;
  std::vector<int64_t> window_;  // recent ids, bos/eos/pad left out (decode drops them)
  size_t read_ = 0;              // window_[0, read_) is already returned
  size_t prefix_bytes_ = 0;      // size of decode(window_[0, read_))
};

}  // namespace lego::text
