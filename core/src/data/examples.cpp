#include "lego/data/examples.h"

#include <algorithm>
#include <map>

#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "lego/text/chat_template.h"

namespace lego::data {
namespace {

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

std::string strip(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return {};
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

// The release's role names and separators (conv_lego).
constexpr const char* kHuman = "Human";
constexpr const char* kAssistant = "Assistant";
constexpr const char* kTurnStart = "### ";
constexpr const char* kTurnEnd = "\n";

}  // namespace

Masking parse_masking(const std::string& name) {
  if (name == "released") return Masking::Released;
  if (name == "human_turns") return Masking::HumanTurns;
  throw Error(ErrorKind::InvalidArgument, "masking '" + name + "' is not released or human_turns");
}

ExampleBuilder::ExampleBuilder(const Pipeline& pipeline, ExampleOptions options)
    : pipeline_(pipeline), options_(options) {
  if (options_.max_length < 2) throw Error(ErrorKind::InvalidArgument, "max_length must be at least 2");
}

Example ExampleBuilder::build(const Row& row) const {
  const auto& order = pipeline_.media_order();
  std::map<std::string, size_t> wanted;
  for (const auto& m : row.media) {
    if (std::find(order.begin(), order.end(), m.modality) == order.end()) {
      throw Error(ErrorKind::Format, row.where() + ": the model has no modality '" + m.modality + "'");
    }
    ++wanted[m.modality];
  }
  std::vector<Message> messages = row.messages;
  std::map<std::string, size_t> placed;
  for (auto& m : messages) {
    // Last modality of the media order first: each goes in front of those placed before it.
    for (auto name_it = order.rbegin(); name_it != order.rend(); ++name_it) {
      const auto& name = *name_it;
      const auto& ph = pipeline_.placeholder(name);
      const size_t n = count_of(m.value, ph);
      placed[name] += n;
      if (n == 0 || !options_.media_first) continue;
      // As the release does: the placeholders leave the turn and go in front of it, each modality in front
      // of the ones placed before it (so the turn starts in model.ini's media order).
      std::string v = m.value;
      for (size_t at = v.find(ph); at != std::string::npos; at = v.find(ph)) v.erase(at, ph.size());
      std::string prefix;
      for (size_t k = 0; k < n; ++k) prefix += ph + "\n";
      m.value = prefix + strip(v);
    }
  }
  size_t total = 0;
  for (const auto& [name, n] : placed) total += n;
  if (total == 0 && !row.media.empty()) {
    // No placeholders at all: the media go in front of the first human turn, as at inference.
    for (auto& m : messages) {
      if (!m.human) continue;
      std::string prefix;
      for (const auto& name : order) {
        for (size_t k = 0; k < wanted[name]; ++k) prefix += pipeline_.placeholder(name) + "\n";
      }
      m.value = prefix + m.value;
      placed = wanted;
      break;
    }
  }
  for (const auto& name : order) {
    if (placed[name] != wanted[name]) {
      throw Error(ErrorKind::Format, row.where() + ": " + std::to_string(placed[name]) + " " +
                                         pipeline_.placeholder(name) + " placeholders but " +
                                         std::to_string(wanted[name]) + " " + name + " files");
    }
  }

  const auto& tok = pipeline_.tokenizer();
  const std::string header = pipeline_.system_prompt() + "\n\n";
  std::vector<std::string> turns;
  for (const auto& m : messages) {
    turns.push_back(std::string(kTurnStart) + (m.human ? kHuman : kAssistant) + ": " + pipeline_.expand(m.value) + kTurnEnd);
  }
  // The whole conversation is tokenized at once, as inference tokenizes its prompt (pieces tokenized on
  // their own would start with SentencePiece's dummy prefix, U+2581 before "###", which a prompt never has).
  std::string conversation = header;
  std::vector<size_t> starts_at;  // character offset of each turn
  for (const auto& t : turns) {
    starts_at.push_back(conversation.size());
    conversation += t;
  }
  conversation += kTurnStart;
  Example ex;
  ex.ids = tok.encode(conversation, /*add_bos=*/true);
  ex.labels = ex.ids;
  auto mask = [&](int64_t from, int64_t to) {
    const auto n = static_cast<int64_t>(ex.ids.size());
    for (int64_t i = std::max<int64_t>(from, 0); i < std::min(to, n); ++i) ex.labels[static_cast<size_t>(i)] = kIgnoreLabel;
  };
  if (options_.masking == Masking::Released) {
    // The release walks the ids with the lengths of the pieces tokenized on their own, BOS included.
    int64_t cur = static_cast<int64_t>(tok.encode(header, true).size());
    mask(0, cur);
    for (size_t k = 0; k < turns.size(); ++k) {
      const auto len = static_cast<int64_t>(tok.encode(turns[k], true).size());
      if (messages[k].human) mask(cur + 2, cur + len);
      cur += len;
    }
  } else {
    // Exact extents: the tokenized prefix before a character offset, clipped to what it shares with the whole.
    auto boundary = [&](size_t chars) {
      const auto prefix = tok.encode(conversation.substr(0, chars), /*add_bos=*/true);
      int64_t n = 0;
      while (n < static_cast<int64_t>(std::min(prefix.size(), ex.ids.size())) &&
             prefix[static_cast<size_t>(n)] == ex.ids[static_cast<size_t>(n)]) {
        ++n;
      }
      return n;
    };
    mask(0, boundary(header.size()));
    for (size_t k = 0; k < turns.size(); ++k) {
      if (!messages[k].human) continue;
      const auto end = k + 1 < turns.size() ? starts_at[k + 1] : conversation.size() - std::string(kTurnStart).size();
      mask(boundary(starts_at[k]), boundary(end));
    }
  }

  // Media blocks, in order: the truncation must not cut one.
  std::map<int64_t, std::pair<std::string, int64_t>> starts;  // start id -> (modality, tokens)
  for (const auto& name : order) {
    const auto frame = pipeline_.modality(name).frame_tokens();
    starts[tok.token_id(frame.front())] = {name, pipeline_.modality(name).tokens()};
  }
  std::map<std::string, size_t> next;
  std::map<std::string, std::vector<const RowMedium*>> by_modality;
  for (const auto& m : row.media) by_modality[m.modality].push_back(&m);
  int64_t last_block_end = 0;
  for (size_t i = 0; i < ex.ids.size(); ++i) {
    auto it = starts.find(ex.ids[i]);
    if (it == starts.end()) continue;
    const auto& [name, tokens] = it->second;
    ex.media.push_back(*by_modality[name][next[name]++]);
    last_block_end = static_cast<int64_t>(i) + tokens + 2;
    i += static_cast<size_t>(tokens) + 1;
  }
  if (last_block_end > options_.max_length) {
    throw Error(ErrorKind::Format, row.where() + ": too long: its media blocks end at token " +
                                       std::to_string(last_block_end) + ", past max_length " +
                                       std::to_string(options_.max_length));
  }
  if (static_cast<int64_t>(ex.ids.size()) > options_.max_length) {
    ex.ids.resize(static_cast<size_t>(options_.max_length));
    ex.labels.resize(static_cast<size_t>(options_.max_length));
    ex.truncated = true;
  }
  ex.targets = std::count_if(ex.labels.begin(), ex.labels.end(), [](int64_t l) { return l != kIgnoreLabel; });
  return ex;
}

}  // namespace lego::data
