#include "lego/data/rows.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::data {
namespace {

// nlohmann holds a document in about ten times its text's size.
constexpr double kJsonMemoryFactor = 10;

std::string type_of(const nlohmann::json& j) { return j.type_name(); }

// Fills `row` from `j`; returns why the row is bad, or "" when it is fine.
std::string parse_row(const nlohmann::json& j, const std::map<std::string, std::filesystem::path>& roots, Row& row) {
  if (!j.is_object()) return "is a " + type_of(j) + ", not an object";
  if (auto it = j.find("id"); it != j.end()) row.id = it->is_string() ? it->get<std::string>() : it->dump();
  for (const auto& [modality, root] : roots) {
    auto it = j.find(modality);
    if (it == j.end() || it->is_null()) continue;
    std::vector<std::string> files;
    if (it->is_string()) {
      files.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const auto& f : *it) {
        if (!f.is_string()) return "'" + modality + "' holds a " + type_of(f) + ", not a path";
        files.push_back(f.get<std::string>());
      }
    } else {
      return "'" + modality + "' is a " + type_of(*it) + ", not a path or a list of paths";
    }
    for (const auto& f : files) {
      if (f.empty()) return "'" + modality + "' names an empty path";
      std::filesystem::path p(f);
      row.media.push_back({modality, p.is_absolute() ? p : root / p});
    }
  }
  auto conv = j.find("conversations");
  if (conv == j.end()) return "has no 'conversations'";
  if (!conv->is_array()) return "'conversations' is a " + type_of(*conv) + ", not a list";
  bool answered = false;
  for (size_t t = 0; t < conv->size(); ++t) {
    const auto& turn = (*conv)[t];
    const auto at = "turn " + std::to_string(t + 1);
    if (!turn.is_object()) return at + " is a " + type_of(turn) + ", not an object";
    auto from = turn.find("from");
    auto value = turn.find("value");
    if (from == turn.end() || !from->is_string()) return at + " has no 'from' string";
    if (value == turn.end() || !value->is_string()) return at + " has no 'value' string";
    const auto who = from->get<std::string>();
    Message m;
    if (who == "human" || who == "user") {
      m.human = true;
    } else if (who == "gpt" || who == "assistant") {
      m.human = false;
      answered = true;
    } else {
      return at + " is from '" + who + "' (human or gpt expected)";
    }
    m.value = value->get<std::string>();
    row.messages.push_back(std::move(m));
  }
  if (!answered) return "has no assistant turn";
  return {};
}

}  // namespace

std::string Row::where() const { return source + " row " + std::to_string(index + 1); }

std::vector<Row> read_rows(const std::filesystem::path& file, const std::map<std::string, std::filesystem::path>& roots,
                           const BadRowHandler& on_bad) {
  const auto bytes = require_regular_file(file, "dataset file");
  require_allocatable(static_cast<double>(bytes) * kJsonMemoryFactor, file.string() + ": dataset file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open the dataset file");
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  std::vector<nlohmann::json> items;
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw Error(ErrorKind::Format, file.string() + ": the dataset file is empty");
  try {
    if (s[first] == '[') {
      auto doc = nlohmann::json::parse(s);
      for (auto& item : doc) items.push_back(std::move(item));
    } else {
      std::istringstream lines(s);
      std::string line;
      int64_t number = 0;
      while (std::getline(lines, line)) {
        ++number;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        try {
          items.push_back(nlohmann::json::parse(line));
        } catch (const nlohmann::json::exception& e) {
          throw Error(ErrorKind::Format, file.string() + ": line " + std::to_string(number) +
                                             " is not JSON (" + e.what() + ")");
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, file.string() + ": not a JSON array or JSON Lines (" + e.what() + ")");
  }
  std::vector<Row> rows;
  rows.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    Row row;
    row.source = file.string();
    row.index = static_cast<int64_t>(i);
    if (const auto why = parse_row(items[i], roots, row); !why.empty()) {
      if (!on_bad) throw Error(ErrorKind::Format, row.where() + ": " + why);
      on_bad(row, why);
      continue;
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace lego::data
