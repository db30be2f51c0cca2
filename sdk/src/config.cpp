#include "lego/sdk/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <mutex>
#include <set>
#include <sstream>

#include "lego/sdk/error.h"

namespace lego::config {

namespace {

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

}  // namespace

struct Config::ReadRecord {
  std::mutex mutex;
  std::set<std::string> keys;
};

Config::Config() : read_(std::make_shared<ReadRecord>()) {}

Config::Config(std::filesystem::path source) : source_(std::move(source)), read_(std::make_shared<ReadRecord>()) {}

void Config::mark_read(const std::string& key) const {
  std::lock_guard<std::mutex> lock(read_->mutex);
  read_->keys.insert(key);
}

std::vector<std::string> Config::unread_keys(const std::vector<std::string>& sections) const {
  std::lock_guard<std::mutex> lock(read_->mutex);
  std::vector<std::string> out;
  for (const auto& [k, v] : values_) {
    const std::string section = k.substr(0, k.find('.'));
    if (!sections.empty() && std::find(sections.begin(), sections.end(), section) == sections.end()) continue;
    if (!read_->keys.count(k)) out.push_back(k);
  }
  return out;
}

void Config::set(std::string_view assignment) {
  const auto eq = assignment.find('=');
  const std::string key = trim(assignment.substr(0, eq));
  if (eq == std::string_view::npos || key.find('.') == std::string::npos || key.front() == '.' ||
      key.back() == '.') {
    throw Error(ErrorKind::InvalidArgument,
                "--set '" + std::string(assignment) + "': expected section.key=value");
  }
  set(key, trim(assignment.substr(eq + 1)));
}

void Config::set(const std::string& key, const std::string& value) {
  // What to_ini() writes must read back the same: INI has no escapes, so '#' (a comment), line breaks and
  // other control characters cannot be stored, and a key is letters, digits, '_', '-' and one '.'.
  const auto dot = key.find('.');
  const bool key_ok = dot != std::string::npos && dot > 0 && dot + 1 < key.size() &&
                      key.find('.', dot + 1) == std::string::npos &&
                      std::all_of(key.begin(), key.end(), [](unsigned char c) {
                        return std::isalnum(c) || c == '_' || c == '-' || c == '.';
                      });
  if (!key_ok) {
    throw Error(ErrorKind::InvalidArgument, where() + ": key '" + key + "' is not section.key (letters, digits, _ and -)");
  }
  if (std::any_of(value.begin(), value.end(), [](unsigned char c) { return c == '#' || c < 0x20 || c == 0x7F; }) ||
      value != trim(value)) {
    throw Error(ErrorKind::InvalidArgument, where() + ": value of '" + key +
                                                "' holds '#', a line break, a control character or outer spaces, which INI cannot keep");
  }
  values_[key] = value;
}

bool Config::has(const std::string& key) const {
  if (values_.count(key) == 0) return false;
  mark_read(key);
  return true;
}

std::string Config::where() const { return source_.empty() ? std::string("config") : source_.string(); }

void Config::bad_value(const std::string& key, const std::string& value, const char* want) const {
  throw Error(ErrorKind::Format, where() + ": key '" + key + "' = '" + value + "' is not " + want);
}

std::string Config::get_string(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw Error(ErrorKind::NotFound, where() + ": missing key '" + key + "'");
  mark_read(key);
  return it->second;
}

std::string Config::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

int64_t Config::get_int(const std::string& key) const {
  const std::string v = get_string(key);
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || ptr != v.data() + v.size()) bad_value(key, v, "an integer");
  return out;
}

int64_t Config::get_int(const std::string& key, int64_t fallback) const { return has(key) ? get_int(key) : fallback; }

double Config::get_double(const std::string& key) const {
  const std::string v = get_string(key);
  try {
    size_t used = 0;
    const double out = std::stod(v, &used);
    if (used != v.size() || !std::isfinite(out)) bad_value(key, v, "a finite number");
    return out;
  } catch (const std::logic_error&) {
    bad_value(key, v, "a finite number");
  }
}

double Config::get_double(const std::string& key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

int64_t Config::get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const {
  const int64_t v = get_int(key, fallback);
  if (v < min || v > max) {
    throw Error(ErrorKind::Format, where() + ": key '" + key + "' = " + std::to_string(v) + " is outside [" +
                                       std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return v;
}

double Config::get_double(const std::string& key, double fallback, double min, double max) const {
  const double v = get_double(key, fallback);
  if (v < min || v > max) {
    std::ostringstream m;
    m << where() << ": key '" << key << "' = " << v << " is outside [" << min << ", " << max << "]";
    throw Error(ErrorKind::Format, m.str());
  }
  return v;
}

bool Config::get_bool(const std::string& key) const {
  const std::string v = get_string(key);
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  bad_value(key, v, "a boolean (true/false)");
}

bool Config::get_bool(const std::string& key, bool fallback) const { return has(key) ? get_bool(key) : fallback; }

std::vector<std::string> Config::get_list(const std::string& key, const std::vector<std::string>& fallback) const {
  if (!has(key)) return fallback;
  std::istringstream in(get_string(key));
  std::vector<std::string> out;
  for (std::string item; in >> item;) out.push_back(item);
  return out;
}

std::vector<std::string> Config::sections() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : values_) {
    auto s = k.substr(0, k.find('.'));
    if (out.empty() || out.back() != s) out.push_back(s);
  }
  return out;
}

std::vector<std::string> Config::section_keys(const std::string& section) const {
  std::vector<std::string> out;
  const std::string prefix = section + ".";
  for (const auto& [k, v] : values_) {
    if (k.rfind(prefix, 0) == 0) out.push_back(k.substr(prefix.size()));
  }
  return out;
}

std::string Config::to_ini() const {
  std::ostringstream out;
  std::string section;
  for (const auto& [k, v] : values_) {
    const auto dot = k.find('.');
    const std::string s = k.substr(0, dot);
    if (s != section) {
      out << (section.empty() ? "" : "\n") << '[' << s << "]\n";
      section = s;
    }
    out << k.substr(dot + 1) << " = " << v << '\n';
  }
  return out.str();
}


ConfigSection::ConfigSection() : config_(std::make_shared<Config>()) {}

ConfigSection::ConfigSection(std::shared_ptr<const Config> config, std::string section)
    : config_(std::move(config)), section_(std::move(section)) {}

}  // namespace lego::config
