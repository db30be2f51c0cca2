#include "lego/data/templates.h"

#include <fstream>
#include <sstream>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::data {
namespace {

bool slot_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; }

// Checks the slots of one phrasing; returns an empty string when they are fine, else why not.
std::string check_slots(const std::string& line) {
  for (size_t at = line.find('{'); at != std::string::npos; at = line.find('{', at + 1)) {
    const size_t close = line.find('}', at);
    if (close == std::string::npos) return "an unclosed '{'";
    if (close == at + 1) return "an empty slot '{}'";
    for (size_t k = at + 1; k < close; ++k) {
      if (!slot_char(line[k])) return "a slot '" + line.substr(at, close - at + 1) + "' that is not {lower_case_name}";
    }
  }
  return {};
}

}  // namespace

TemplateSet::TemplateSet(std::vector<std::string> phrasings, std::string source)
    : phrasings_(std::move(phrasings)), source_(std::move(source)) {
  if (phrasings_.empty()) throw Error(ErrorKind::Format, source_ + ": no phrasing (one per line)");
  for (size_t i = 0; i < phrasings_.size(); ++i) {
    if (const auto why = check_slots(phrasings_[i]); !why.empty()) {
      throw Error(ErrorKind::Format, source_ + ": phrasing " + std::to_string(i + 1) + " has " + why);
    }
  }
}

TemplateSet TemplateSet::load(const std::filesystem::path& file) {
  require_regular_file(file, "template file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open the template file");
  std::vector<std::string> phrasings;
  std::string line;
  size_t number = 0;
  constexpr size_t kMaxLine = 4096;
  constexpr size_t kMaxPhrasings = 10000;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > kMaxLine) {
      throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(number) + " is longer than " +
                                         std::to_string(kMaxLine) + " bytes");
    }
    for (unsigned char c : line) {
      if (c < 0x20 && c != '\t') {
        throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(number) + " holds a control byte");
      }
    }
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    line = line.substr(first, line.find_last_not_of(" \t") - first + 1);
    if (const auto why = check_slots(line); !why.empty()) {
      throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(number) + " has " + why);
    }
    if (phrasings.size() == kMaxPhrasings) {
      throw Error(ErrorKind::Format, file.string() + ": more than " + std::to_string(kMaxPhrasings) + " phrasings");
    }
    phrasings.push_back(line);
  }
  return TemplateSet(std::move(phrasings), file.string());
}

std::string TemplateSet::fill(size_t i, const std::map<std::string, std::string>& values) const {
  if (i >= phrasings_.size()) {
    throw Error(ErrorKind::InvalidArgument, source_ + ": no phrasing " + std::to_string(i + 1) + " (it has " +
                                                std::to_string(phrasings_.size()) + ")");
  }
  const auto& p = phrasings_[i];
  std::string out;
  size_t from = 0;
  for (size_t at = p.find('{'); at != std::string::npos; at = p.find('{', from)) {
    const size_t close = p.find('}', at);
    const auto name = p.substr(at + 1, close - at - 1);
    const auto it = values.find(name);
    if (it == values.end()) {
      throw Error(ErrorKind::InvalidArgument, source_ + ": phrasing " + std::to_string(i + 1) + " needs a value for {" +
                                                  name + "}");
    }
    out += p.substr(from, at - from) + it->second;
    from = close + 1;
  }
  return out + p.substr(from);
}

std::string TemplateSet::pick(std::mt19937_64& rng, const std::map<std::string, std::string>& values) const {
  std::uniform_int_distribution<size_t> d(0, phrasings_.size() - 1);
  return fill(d(rng), values);
}

}  // namespace lego::data
