// Config: the one reader of lego's INI settings, shared by core and plugins (DESIGN.md, core/config).
//
// Keys are "section.key". Core reads model.ini and training configs into a Config (config::read_file in
// core, on Boost.Program_options) and applies `--set section.key=value` overrides; a plugin sees only its
// own section through a read-only ConfigSection. Every typed getter that fails names the file, the section
// and the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lego::config {

class Config {
 public:
  Config();
  // An empty config that says `source` in its messages (for configs built in memory from a file's data).
  explicit Config(std::filesystem::path source);

  // Applies "section.key=value"; throws InvalidArgument on a malformed assignment.
  void set(std::string_view assignment);
  void set(const std::string& key, const std::string& value);

  bool has(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  // The value (or fallback) must lie in [min, max]; out of range is a Format error naming file, key and range.
  int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const;
  // A finite number: nan and inf are refused like any other bad value.
  double get_double(const std::string& key) const;
  double get_double(const std::string& key, double fallback) const;
  double get_double(const std::string& key, double fallback, double min, double max) const;
  // true/1/yes/on and false/0/no/off.
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
  // Keys (section.key) of `sections` (all sections when empty) that no getter or has() has asked for yet,
  // sorted: after everything that reads a config has read it, these are typos or keys nothing knows.
  // Copies of a Config share this record, so a plugin's reads through its ConfigSection count.
  std::vector<std::string> unread_keys(const std::vector<std::string>& sections = {}) const;
  // The file this came from ("" when built in memory), for messages and relative paths.
  const std::filesystem::path& source() const { return source_; }

 private:
  [[noreturn]] void bad_value(const std::string& key, const std::string& value, const char* want) const;
  std::string where() const;

  void mark_read(const std::string& key) const;

  struct ReadRecord;
  std::filesystem::path source_;
  std::map<std::string, std::string> values_;
  std::shared_ptr<ReadRecord> read_;
};

// A read-only view of one section: what a plugin's constructor receives. Keys are given without the
// section; errors still name the file and "section.key".
class ConfigSection {
 public:
  ConfigSection();  // an empty, unnamed section (plugin probes use all defaults)
  ConfigSection(std::shared_ptr<const Config> config, std::string section);

  const std::string& name() const { return section_; }
  const std::filesystem::path& file() const { return config_->source(); }
  bool has(const std::string& key) const { return config_->has(full(key)); }
  std::vector<std::string> keys() const { return config_->section_keys(section_); }

  std::string get_string(const std::string& key) const { return config_->get_string(full(key)); }
  std::string get_string(const std::string& key, const std::string& fallback) const {
    return config_->get_string(full(key), fallback);
  }
  int64_t get_int(const std::string& key) const { return config_->get_int(full(key)); }
  int64_t get_int(const std::string& key, int64_t fallback) const { return config_->get_int(full(key), fallback); }
  int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const {
    return config_->get_int(full(key), fallback, min, max);
  }
  double get_double(const std::string& key) const { return config_->get_double(full(key)); }
  double get_double(const std::string& key, double fallback) const { return config_->get_double(full(key), fallback); }
  double get_double(const std::string& key, double fallback, double min, double max) const {
    return config_->get_double(full(key), fallback, min, max);
  }
  bool get_bool(const std::string& key) const { return config_->get_bool(full(key)); }
  bool get_bool(const std::string& key, bool fallback) const { return config_->get_bool(full(key), fallback); }
  std::vector<std::string> get_list(const std::string& key, const std::vector<std::string>& fallback = {}) const {
    return config_->get_list(full(key), fallback);
  }

 private:
  std::string full(const std::string& key) const { return section_ + "." + key; }

  std::shared_ptr<const Config> config_;
  std::string section_;
};

}  // namespace lego::config
