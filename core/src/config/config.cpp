#include "lego/config/config.h"

#include <boost/program_options.hpp>

#include <fstream>
#include <set>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::config {
namespace po = boost::program_options;

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// The first line Boost's INI parser refuses, as Boost reads lines: text after '#' is a comment, blank
// lines are skipped, "[name]" opens a section, anything else needs "name = value" with a name.
std::string refused_line(std::istream& in) {
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    const auto body = trim(line.substr(0, line.find('#')));
    if (body.empty()) continue;
    if (body.front() == '[' && body.back() == ']') continue;
    const auto eq = body.find('=');
    if (eq != std::string::npos && !trim(body.substr(0, eq)).empty()) continue;
    return "line " + std::to_string(number) + " is not '[section]', 'key = value' or a comment: " + body;
  }
  return "not an INI file";
}

}  // namespace

Config read_file(const std::filesystem::path& file) {
  require_regular_file(file, "config");  // a folder read as an empty config; a FIFO blocked
  std::ifstream in(file);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open config");
  Config c(file);
  try {
    po::options_description none;
    const auto parsed = po::parse_config_file(in, none, /*allow_unregistered=*/true);
    std::set<std::string> seen;
    for (const auto& opt : parsed.options) {
      if (opt.string_key.find('.') == std::string::npos) {
        throw Error(ErrorKind::Format, file.string() + ": key '" + opt.string_key + "' is outside any [section]");
      }
      if (!seen.insert(opt.string_key).second) {
        throw Error(ErrorKind::Format, file.string() + ": key '" + opt.string_key + "' is given twice");
      }
      c.set(opt.string_key, opt.value.empty() ? "" : trim(opt.value.front()));
    }
  } catch (const po::error&) {
    // Not Boost's what(): it substitutes the offending line into its message until no placeholder is
    // left, and a line that itself holds one ("x%invalid_line%") never ends (a fuzz finding).
    in.clear();
    in.seekg(0);
    throw Error(ErrorKind::Format, file.string() + ": " + refused_line(in));
  }
  return c;
}

}  // namespace lego::config
