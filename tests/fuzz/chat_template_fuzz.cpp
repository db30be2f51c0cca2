// Fuzzes prompt building: the chat templates (render_inference_prompt, render_training_prompt) on any
// system prompt, history and message, then the tokenizer (with the tiny model's added tokens) and the
// incremental decoder on the prompt. Checks: the template frames the message as documented; ids stay in
// the vocabulary; decode(encode(text)) == text for valid UTF-8 (sentencepiece itself maps U+2581 to a
// space and NUL ends its strings, so those are left out); and the incremental decoder's pieces add up to
// decode() — for the prompt's ids and for arbitrary id sequences.
#include <fuzzer/FuzzedDataProvider.h>

#include <memory>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "lego/config/config.h"
#include "lego/text/chat_template.h"
#include "lego/text/incremental_decoder.h"
#include "lego/text/tokenizer.h"

namespace {

using lego::fuzz::check;
using lego::text::Tokenizer;

std::shared_ptr<const Tokenizer> tokenizer() {
  static const std::shared_ptr<const Tokenizer> tok = [] {
    const std::filesystem::path source(LEGO_SOURCE_DIR);
    const auto cfg = lego::config::read_file(source / "configs/models/tiny.ini");
    const auto prefix = lego::fuzz::scratch_dir() / "tokenizer";
    lego::text::TrainerOptions options;
    options.vocab_size = cfg.get_int("tokenizer.vocab_size");
    lego::text::train_sentencepiece(source / "configs/corpus/tiny.txt", prefix, options);
    return std::make_shared<const Tokenizer>(
        Tokenizer::from_file(prefix.string() + ".model", cfg.get_list("tokenizer.added_tokens")));
  }();
  return tok;
}

bool valid_utf8(const std::string& s) {
  static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};  // shortest form of each length
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c >> 5) == 0x6) {
      n = 1, cp = c & 0x1F;
    } else if ((c >> 4) == 0xE) {
      n = 2, cp = c & 0x0F;
    } else if ((c >> 3) == 0x1E) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

void check_incremental(const std::shared_ptr<const Tokenizer>& tok, const std::vector<int64_t>& ids) {
  lego::text::IncrementalDecoder dec(tok);
  std::string streamed;
  for (int64_t id : ids) streamed += dec.push(id);
  streamed += dec.pending_text();
  check(streamed == tok->decode(ids), "incremental decoding differs from decode()");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const auto tok = tokenizer();
  const std::string system = in.ConsumeBool() ? lego::text::kLegoSystemPrompt : in.ConsumeRandomLengthString(256);
  std::vector<lego::text::Turn> history(in.ConsumeIntegralInRange<size_t>(0, 3));
  for (auto& t : history) {
    t.human = in.ConsumeRandomLengthString(256);
    t.assistant = in.ConsumeRandomLengthString(256);
  }
  const std::string message = in.ConsumeRandomLengthString(1024);

  const std::string prompt = lego::text::render_inference_prompt(history, message, system);
  check(prompt.rfind(system, 0) == 0, "inference prompt does not start with the system prompt");
  const std::string tail = "###Human: " + message + "###Assistant:";
  check(prompt.size() >= tail.size() && prompt.compare(prompt.size() - tail.size(), tail.size(), tail) == 0,
        "inference prompt does not end with the message's turn");
  const std::string training = lego::text::render_training_prompt(history, system);
  check(training.rfind(system + "\n\n", 0) == 0, "training prompt does not start with the system prompt");

  std::vector<int64_t> ids;
  if (!lego::fuzz::refused_or_done([&] { ids = tok->encode(prompt, true); })) return 0;
  check(!ids.empty() && ids.front() == tok->bos_id(), "encode(add_bos) does not start with BOS");
  for (int64_t id : ids) check(id >= 0 && id < tok->vocab_size(), "encode gave an id outside the vocabulary");
  const std::string decoded = tok->decode(ids);
  if (valid_utf8(prompt) && prompt.find('\0') == std::string::npos && prompt.find("\xE2\x96\x81") == std::string::npos) {
    check(decoded == prompt, "decode(encode(prompt)) != prompt");
  }
  check_incremental(tok, ids);

  // Arbitrary ids (what a model may generate), from the rest of the input.
  std::vector<int64_t> any;
  while (in.remaining_bytes() >= 2 && any.size() < 256) any.push_back(in.ConsumeIntegralInRange<int64_t>(0, tok->vocab_size() - 1));
  check_incremental(tok, any);
  return 0;
}
