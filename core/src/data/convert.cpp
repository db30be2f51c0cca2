#include "lego/data/convert.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>

#include "convert_context.h"
#include "lego/model/released_defaults.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::data {
namespace convert_detail {

std::string read_input(const std::filesystem::path& file, const std::string& what) {
  const uint64_t size = require_regular_file(file, what);
  if (size > kMaxInputBytes) {
    bad_input(file, "is " + std::to_string(size) + " bytes, more than the " + std::to_string(kMaxInputBytes) +
                        " an input may have");
  }
  require_allocatable(static_cast<double>(size), file.string());
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(ErrorKind::Io, file.string() + ": cannot open the " + what);
  std::string bytes(static_cast<size_t>(size), '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(size))) {
    throw Error(ErrorKind::Io, file.string() + ": cannot read the " + what);
  }
  return bytes;
}

Json read_json(const std::filesystem::path& file, const std::string& what) {
  const uint64_t size = require_regular_file(file, what);
  // A parsed JSON document takes several times its text in memory; refuse what cannot fit before trying.
  constexpr double kParsedPerByte = 12;
  require_allocatable(static_cast<double>(size) * kParsedPerByte, file.string());
  const auto bytes = read_input(file, what);
  try {
    return Json::parse(bytes);
  } catch (const Json::parse_error& e) {
    bad_input(file, "is not JSON (byte " + std::to_string(e.byte) + ")");
  }
}

std::vector<std::vector<std::string>> read_csv(const std::filesystem::path& file, const std::string& what) {
  const auto bytes = read_input(file, what);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  bool any = false;  // the current row has content
  size_t row_start_line = 1;
  size_t line = 1;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (quoted) {
      if (c == '"' && i + 1 < bytes.size() && bytes[i + 1] == '"') {
        field.push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        if (c == '\n') ++line;
        field.push_back(c);
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < bytes.size() && bytes[i + 1] == '\n') ++i;
      if (any || !field.empty()) {
        row.push_back(std::move(field));
        rows.push_back(std::move(row));
      }
      row.clear();
      field.clear();
      any = false;
      row_start_line = ++line;
    } else {
      field.push_back(c);
    }
  }
  if (quoted) bad_input(file, "line " + std::to_string(row_start_line) + " opens a quoted field that never closes");
  if (any || !field.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
  }
  if (rows.empty()) bad_input(file, "has no header row");
  return rows;
}

size_t csv_column(const std::vector<std::string>& header, const std::string& name, const std::filesystem::path& file) {
  for (size_t i = 0; i < header.size(); ++i) {
    std::string h = header[i];
    if (i == 0 && h.rfind("\xEF\xBB\xBF", 0) == 0) h.erase(0, 3);  // a byte order mark
    if (h == name) return i;
  }
  bad_input(file, "has no column '" + name + "' in its header");
}

void bad_input(const std::filesystem::path& file, const std::string& why) {
  throw Error(ErrorKind::Format, file.string() + ": " + why);
}

std::optional<double> number(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  double v = 0;
  if (it->is_number()) {
    v = it->get<double>();
  } else if (it->is_string()) {
    const auto& s = it->get_ref<const std::string&>();
    char* end = nullptr;
    v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<std::string> text(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<std::string> id_text(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_integer()) return it->dump();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
    return std::nullopt;
  }
  if (it->is_string() && !it->get_ref<const std::string&>().empty()) return it->get<std::string>();
  return std::nullopt;
}

Converter::Converter(const ConvertOptions& options) : options_(options), rng_(options.seed) {
  report_.source = options.source;
  if (options_.min_words > options_.max_words) {
    throw Error(ErrorKind::InvalidArgument, "--min-words " + std::to_string(options_.min_words) +
                                                " is more than --max-words " + std::to_string(options_.max_words));
  }
}

void Converter::require_inputs(size_t min, size_t max, const std::string& usage) const {
  const size_t n = options_.inputs.size();
  if (n < min || n > max) {
    throw Error(ErrorKind::InvalidArgument, "--from " + options_.source + " takes " + usage + " (" + std::to_string(n) +
                                                " --in given)");
  }
}

std::optional<std::string> Converter::clean_text(const std::string& raw) {
  std::string out;
  uint64_t words = 0;
  bool space = true;
  for (const char c : raw) {
    const bool blank = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    if (blank) {
      space = true;
      continue;
    }
    if (space) {
      if (!out.empty()) out.push_back(' ');
      ++words;
      space = false;
    }
    out.push_back(c);
  }
  if (words < options_.min_words || words == 0) {
    drop(kTextTooShort);
    return std::nullopt;
  }
  if (words > options_.max_words) {
    drop(kTextTooLong);
    return std::nullopt;
  }
  return out;
}

std::optional<grounding::Box> Converter::square_box(double x1, double y1, double x2, double y2, double width,
                                                    double height) {
  const bool finite = std::isfinite(x1) && std::isfinite(y1) && std::isfinite(x2) && std::isfinite(y2) &&
                      std::isfinite(width) && std::isfinite(height);
  if (!finite || width <= 0 || height <= 0 || x2 <= x1 || y2 <= y1 || x1 < 0 || y1 < 0 || x2 > width || y2 > height) {
    drop(kInvalidBox);
    return std::nullopt;
  }
  const double side = std::max(width, height);
  const double pad_x = std::floor((side - width) / 2);
  const double pad_y = std::floor((side - height) / 2);
  return grounding::Box{(x1 + pad_x) / side, (y1 + pad_y) / side, (x2 + pad_x) / side, (y2 + pad_y) / side};
}

std::optional<grounding::Span> Converter::relative_span(double t1, double t2, double duration) {
  const bool finite = std::isfinite(t1) && std::isfinite(t2) && std::isfinite(duration);
  if (!finite || duration <= 0 || t1 >= t2 || t1 < 0 || t2 > duration) {
    drop(kInvalidSpan);
    return std::nullopt;
  }
  return grounding::Span{t1 / duration, t2 / duration};
}

bool Converter::claim(const std::string& key) {
  if (seen_.insert(key).second) return true;
  drop(kDuplicate);
  return false;
}

std::string Converter::question(const std::string& task, const std::map<std::string, std::string>& slots) {
  auto it = templates_.find(task);
  if (it == templates_.end()) {
    it = templates_.emplace(task, TemplateSet::load(options_.templates_dir / (task + ".txt"))).first;
  }
  return it->second.pick(rng_, slots);
}

void Converter::emit(const Item& item) {
  const auto& media = released_media_of_source(options_.source);
  if (item.media.size() != media.size()) {
    throw Error(ErrorKind::InvalidArgument, "convert " + options_.source + ": an item has " + std::to_string(item.media.size()) +
                                                " media paths for " + std::to_string(media.size()) + " media");
  }
  nlohmann::ordered_json j;
  j["id"] = item.id;
  std::string human;
  for (size_t i = 0; i < media.size(); ++i) {
    j[media[i].key] = options_.media_prefix + item.media[i];
    human += media[i].placeholder + "\n";
  }
  human += item.question;
  j["conversations"] = nlohmann::ordered_json::array(
      {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", item.answer}}});
  out_ += (report_.written == 0 ? "[\n" : ",\n") + j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  ++report_.written;
}

void Converter::emit_json(const nlohmann::ordered_json& item) {
  out_ += (report_.written == 0 ? "[\n" : ",\n") + item.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  ++report_.written;
}

ConvertResult Converter::finish() {
  ConvertResult r;
  r.json = report_.written == 0 ? "[]\n" : std::move(out_) + "\n]\n";
  r.report = std::move(report_);
  return r;
}

}  // namespace convert_detail

uint64_t ConvertReport::dropped_total() const {
  uint64_t n = 0;
  for (const auto& [reason, count] : dropped) n += count;
  return n;
}

std::string ConvertReport::to_json() const {
  nlohmann::ordered_json j;
  j["source"] = source;
  j["read"] = read;
  j["written"] = written;
  j["dropped_total"] = dropped_total();
  j["dropped"] = nlohmann::ordered_json::object();
  for (const auto& [reason, count] : dropped) j["dropped"][reason] = count;
  return j.dump(2) + "\n";
}

std::string ConvertReport::summary() const {
  std::ostringstream s;
  s << source << ": " << read << " read, " << written << " written, " << dropped_total() << " dropped";
  if (!dropped.empty()) {
    s << " (";
    bool first = true;
    for (const auto& [reason, count] : dropped) {
      s << (first ? "" : ", ") << reason << ' ' << count;
      first = false;
    }
    s << ')';
  }
  return s.str();
}

const std::vector<std::string>& convert_sources() {
  static const std::vector<std::string> sources = {"refcoco", "refcoco+", "refcocog", "vg-regions",
                                                   "charades-sta", "didemo", "activitynet-captions", "clotho",
                                                   "wavcaps", "vggss", "llava"};
  return sources;
}

ConvertResult convert(const ConvertOptions& options) {
  using namespace convert_detail;
  static const std::map<std::string, std::function<void(Converter&)>> by_source = {
      {"refcoco", convert_refer},       {"refcoco+", convert_refer},
      {"refcocog", convert_refer},      {"vg-regions", convert_vg_regions},
      {"charades-sta", convert_charades_sta}, {"didemo", convert_didemo},
      {"activitynet-captions", convert_activitynet}, {"clotho", convert_clotho},
      {"wavcaps", convert_wavcaps},     {"vggss", convert_vggss},
      {"llava", convert_llava}};
  const auto it = by_source.find(options.source);
  if (it == by_source.end()) {
    std::string known;
    for (const auto& s : convert_sources()) known += (known.empty() ? "" : ", ") + s;
    throw Error(ErrorKind::InvalidArgument, "--from '" + options.source + "' is not a source convert reads (" + known + ")");
  }
  Converter c(options);
  it->second(c);
  return c.finish();
}

}  // namespace lego::data
