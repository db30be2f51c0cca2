#include "lego/text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include "lego/sdk/error.h"
#include "lego/sdk/stderr_capture.h"
#include "lego/sdk/files.h"

namespace lego::text {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<std::string> added;
  std::unordered_map<std::string, int64_t> added_ids;
  int64_t sp_size = 0;

  void encode_plain(std::string_view text, std::vector<int64_t>& out) const {
    if (text.empty()) return;
    std::vector<int> ids;
    const auto status = sp.Encode(std::string(text), &ids);
    if (!status.ok()) throw Error(ErrorKind::InvalidArgument, "tokenizer: cannot encode text: " + status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

  // Length of the longest added token that starts at `pos`, and its id; {0, -1} when none does.
  std::pair<size_t, int64_t> added_at(std::string_view text, size_t pos) const {
    size_t best = 0;
    int64_t id = -1;
    for (size_t i = 0; i < added.size(); ++i) {
      const auto& tok = added[i];
      if (tok.size() > best && text.compare(pos, tok.size(), tok) == 0) {
        best = tok.size();
        id = sp_size + static_cast<int64_t>(i);
      }
    }
    return {best, id};
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& model_file, const std::vector<std::string>& added) {
  // Real tokenizers are a few MB; the bound keeps a hostile path from being read whole.
  constexpr uint64_t kMaxBytes = uint64_t{1} << 30;
  const uint64_t size = require_regular_file(model_file, "tokenizer model");
  if (size > kMaxBytes) {
    throw Error(ErrorKind::InvalidArgument, model_file.string() + ": tokenizer model of " + std::to_string(size) +
                                                " bytes is too large to be one");
  }
  std::ifstream in(model_file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw Error(ErrorKind::Io, model_file.string() + ": cannot read the tokenizer model");
  auto impl = std::make_unique<Impl>();
  const auto status = impl->sp.LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    // sentencepiece's own text quotes its source lines; the file and the fact are what a user needs.
    throw Error(ErrorKind::Format, model_file.string() + ": not a sentencepiece model (it does not parse as one)");
  }
  impl->sp_size = impl->sp.GetPieceSize();
  for (const auto& tok : added) {
    if (tok.empty()) throw Error(ErrorKind::InvalidArgument, model_file.string() + ": empty added token");
    if (impl->sp.PieceToId(tok) != impl->sp.unk_id() || impl->added_ids.count(tok)) {
      throw Error(ErrorKind::InvalidArgument, model_file.string() + ": added token '" + tok + "' already exists");
    }
    impl->added_ids.emplace(tok, impl->sp_size + static_cast<int64_t>(impl->added.size()));
    impl->added.push_back(tok);
  }
  return Tokenizer(std::move(impl));
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int64_t> out;
  if (add_bos) out.push_back(bos_id());
  size_t plain_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    auto [len, id] = impl_->added.empty() ? std::pair<size_t, int64_t>{0, -1} : impl_->added_at(text, pos);
    if (len == 0) {
      ++pos;
      continue;
    }
    impl_->encode_plain(text.substr(plain_start, pos - plain_start), out);
    out.push_back(id);
    pos += len;
    plain_start = pos;
  }
  impl_->encode_plain(text.substr(plain_start), out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    std::string piece;
    impl_->sp.Decode(run, &piece);
    out += piece;
    run.clear();
  };
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw Error(ErrorKind::InvalidArgument, "tokenizer: id " + std::to_string(id) + " is outside the vocabulary of " +
                                                  std::to_string(vocab_size()));
    }
    if (id >= impl_->sp_size) {
      flush();
      out += impl_->added[id - impl_->sp_size];
    } else if (id != bos_id() && id != eos_id() && id != pad_id()) {
      run.push_back(static_cast<int>(id));
    }
  }
  flush();
  return out;
}

std::string Tokenizer::piece(int64_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error(ErrorKind::InvalidArgument, "tokenizer: id " + std::to_string(id) + " is outside the vocabulary");
  }
  if (id >= impl_->sp_size) return impl_->added[id - impl_->sp_size];
  return impl_->sp.IdToPiece(static_cast<int>(id));
}

int64_t Tokenizer::token_id(std::string_view token) const {
  auto it = impl_->added_ids.find(std::string(token));
  if (it != impl_->added_ids.end()) return it->second;
  const int id = impl_->sp.PieceToId(std::string(token));
  if (id == impl_->sp.unk_id() && token != impl_->sp.IdToPiece(id)) {
    throw Error(ErrorKind::NotFound, "tokenizer: no token '" + std::string(token) + "'");
  }
  return id;
}

int Tokenizer::byte_value(int64_t id) const {
  if (id < 0 || id >= impl_->sp_size || !impl_->sp.IsByte(static_cast<int>(id))) return -1;
  const auto& p = impl_->sp.IdToPiece(static_cast<int>(id));  // "<0xAB>"
  return p.size() == 6 ? std::stoi(p.substr(3, 2), nullptr, 16) : -1;
}

int64_t Tokenizer::vocab_size() const { return impl_->sp_size + static_cast<int64_t>(impl_->added.size()); }
int64_t Tokenizer::bos_id() const { return impl_->sp.bos_id(); }
int64_t Tokenizer::eos_id() const { return impl_->sp.eos_id(); }
int64_t Tokenizer::pad_id() const { return impl_->sp.unk_id(); }
const std::vector<std::string>& Tokenizer::added_tokens() const { return impl_->added; }

void train_sentencepiece(const std::filesystem::path& corpus, const std::filesystem::path& out_prefix,
                         const TrainerOptions& options) {
  if (!std::filesystem::exists(corpus)) throw Error(ErrorKind::NotFound, corpus.string() + ": corpus not found");
  // LLaMA's tokenizer settings: BPE, identity normalisation, whitespace kept, digits split, byte fallback.
  const std::string args = "--input=" + corpus.string() + " --model_prefix=" + out_prefix.string() +
                           " --vocab_size=" + std::to_string(options.vocab_size) +
                           " --model_type=bpe --character_coverage=1.0 --split_digits=true"
                           " --byte_fallback=" + (options.byte_fallback ? "true" : "false") +
                           " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                           " --add_dummy_prefix=true --allow_whitespace_only_pieces=true"
                           " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=1"
                           " --minloglevel=2";
  // The trainer logs every step to stderr and offers no switch; its failures come back in `status`.
  sentencepiece::util::Status status;
  (void)capture_stderr([&] { status = sentencepiece::SentencePieceTrainer::Train(args); });
  if (!status.ok()) {
    throw Error(ErrorKind::InvalidArgument, corpus.string() + ": sentencepiece training failed: " + status.ToString());
  }
}

}  // namespace lego::text
