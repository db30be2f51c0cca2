// Tokenizer: a sentencepiece model plus added tokens beyond its vocabulary (DESIGN.md, core/text).
//
// Added tokens (the released LEGO model adds 9, ids 32000-32008) are matched in the text first, longest
// first, and always encode as one id; the text between them goes to sentencepiece piece by piece. This is
// the behaviour of the slow HF LlamaTokenizer the original code used (legacy mode), and the parity tests
// hold us to it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lego::text {

class Tokenizer {
 public:
  // Loads `model_file`; added token i gets id (sentencepiece vocabulary size + i).
  static Tokenizer from_file(const std::filesystem::path& model_file, const std::vector<std::string>& added = {});
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Text -> ids, with BOS first when `add_bos`.
  std::vector<int64_t> encode(std::string_view text, bool add_bos = true) const;
  // Ids -> text; BOS/EOS/pad are dropped, added tokens are written as themselves.
  std::string decode(const std::vector<int64_t>& ids) const;
  // The piece of one id (added tokens as themselves).
  std::string piece(int64_t id) const;
  // Id of an added token or a sentencepiece piece; throws NotFound when absent.
  int64_t token_id(std::string_view token) const;
  // The byte of a byte-fallback piece (<0x41> -> 65); -1 for every other id.
  int byte_value(int64_t id) const;

  int64_t vocab_size() const;  // sentencepiece pieces + added tokens
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t pad_id() const;  // the unk id, as LLaMA uses it (pad = unk = 0)
  const std::vector<std::string>& added_tokens() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct TrainerOptions {
  int64_t vocab_size = 512;
  bool byte_fallback = true;
};

// Trains a LLaMA-style BPE sentencepiece model (identity normalisation, digits split, byte fallback) on a
// text file and writes `<out_prefix>.model`.
void train_sentencepiece(const std::filesystem::path& corpus, const std::filesystem::path& out_prefix,
                         const TrainerOptions& options);

}  // namespace lego::text
