// Task templates: the phrasings of one task's question (the paper's Table 4), read from a text file such as
// configs/templates/rec.txt (DESIGN.md, configs/templates). Used by `lego synth` and `lego convert` to word
// questions, and by `lego eval` for the released prompt (a file's first phrasing).
//
// File format: one phrasing per line; blank lines and lines starting with '#' are skipped. A phrasing
// names its slots as `{name}` (lower-case letters, digits, '_'), filled when it is used:
//   Output the coordinate of {exp}
//   Where is {exp} in the image? Answer with its box.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace lego::data {

class TemplateSet {
 public:
  // Reads `file`; NotFound when it is missing, Format (naming file and line) when it has no phrasing, a
  // line holds an unclosed or empty slot, or it is not UTF-8 text.
  static TemplateSet load(const std::filesystem::path& file);
  // From phrasings in memory (`source` is named in errors).
  TemplateSet(std::vector<std::string> phrasings, std::string source);

  const std::vector<std::string>& phrasings() const { return phrasings_; }
  size_t size() const { return phrasings_.size(); }
  // Phrasing `i` with its slots filled from `values`; a slot without a value is InvalidArgument naming
  // the slot and the file.
  std::string fill(size_t i, const std::map<std::string, std::string>& values) const;
  // A phrasing drawn uniformly with `rng`, filled.
  std::string pick(std::mt19937_64& rng, const std::map<std::string, std::string>& values) const;

 private:
  std::vector<std::string> phrasings_;
  std::string source_;
};

}  // namespace lego::data
