// Config: INI files read with Boost.Program_options, plus `--set section.key=value` overrides
// (DESIGN.md, core/config). Keys are "section.key". Every typed getter that fails names the file and key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lego::config {

class Config {
 public:
  Config() = default;
  // Parses an INI file; throws NotFound / Format naming the file.
  static Config from_file(const std::filesystem::path& file);

  // Applies "section.key=value"; throws InvalidArgument on a malformed assignment.
  void set(std::string_view assignment);
  void set(const std::string& key, const std::string& value);

  bool has(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool fallback) const;
  // Whitespace-separated list ("" -> empty).
  std::vector<std::string> get_list(const std::string& key, const std::vector<std::string>& fallback = {}) const;

  // Section names, sorted.
  std::vector<std::string> sections() const;
  // Keys of one section, without the section prefix, sorted.
  std::vector<std::string> section_keys(const std::string& section) const;
  // INI text, sections in sorted order.
  std::string to_ini() const;
  // The file this came from ("" when built in memory), for messages and relative paths.
  const std::filesystem::path& source() const { return source_; }

 private:
  [[noreturn]] void bad_value(const std::string& key, const std::string& value, const char* want) const;
  std::string where() const;

  std::filesystem::path source_;
  std::map<std::string, std::string> values_;
};

}  // namespace lego::config
