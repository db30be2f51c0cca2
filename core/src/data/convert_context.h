// Shared machinery of the dataset converters (lego/data/convert.h): reading the inputs with bounds and
// errors that name the file, checking texts, boxes and spans, counting what is dropped and why, wording
// questions from the templates, and writing items. One file per source family uses it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "lego/data/convert.h"
#include "lego/data/templates.h"
#include "lego/grounding/grounding.h"

namespace lego::data::convert_detail {

using Json = nlohmann::json;

// The reasons entries are dropped, as the report names them.
inline constexpr const char* kInvalidBox = "invalid_box";
inline constexpr const char* kInvalidSpan = "invalid_span";
inline constexpr const char* kDuplicate = "duplicate";
inline constexpr const char* kTextTooShort = "text_too_short";
inline constexpr const char* kTextTooLong = "text_too_long";
inline constexpr const char* kMissingField = "missing_field";
inline constexpr const char* kUnknownReference = "unknown_reference";  // names an image/video the inputs lack
inline constexpr const char* kOtherSplit = "other_split";
inline constexpr const char* kMissingPlaceholder = "missing_placeholder";
inline constexpr const char* kBadTurns = "bad_turns";

// Whole input files are read into memory: this many bytes at most.
inline constexpr uint64_t kMaxInputBytes = uint64_t{16} << 30;

// An input file's bytes; NotFound when missing, InvalidArgument for a folder, Format when too large.
std::string read_input(const std::filesystem::path& file, const std::string& what);
// An input file parsed as JSON; Format naming the file and the byte where it is not JSON.
Json read_json(const std::filesystem::path& file, const std::string& what);
// An input file's CSV rows (RFC 4180: quoted fields may hold commas, quotes and line breaks); Format naming
// the file and row for an unclosed quote. The first row is the header.
std::vector<std::vector<std::string>> read_csv(const std::filesystem::path& file, const std::string& what);
// The column of `name` in a CSV header; Format naming the file when it has none.
size_t csv_column(const std::vector<std::string>& header, const std::string& name, const std::filesystem::path& file);
// Format error "FILE: WHY".
[[noreturn]] void bad_input(const std::filesystem::path& file, const std::string& why);

// A finite number from a JSON number or numeric text, else nothing.
std::optional<double> number(const Json& object, const char* key);
// Text from a JSON string, else nothing.
std::optional<std::string> text(const Json& object, const char* key);
// A JSON integer or integral number as its decimal text (ids), else nothing.
std::optional<std::string> id_text(const Json& object, const char* key);

// One converted item: its media paths (one per released_media_of_source, in order), question and answer.
struct Item {
  std::string id;
  std::vector<std::string> media;
  std::string question;  // without placeholders: they are put in front
  std::string answer;
};

class Converter {
 public:
  explicit Converter(const ConvertOptions& options);

  const ConvertOptions& options() const { return options_; }
  const std::vector<std::filesystem::path>& inputs() const { return options_.inputs; }
  // InvalidArgument unless `min` to `max` files were given; `usage` names them.
  void require_inputs(size_t min, size_t max, const std::string& usage) const;

  // An entry of the inputs was looked at.
  void count_read(uint64_t n = 1) { report_.read += n; }
  void drop(const std::string& reason) { ++report_.dropped[reason]; }
  // --limit reached: converters stop reading.
  bool full() const { return options_.limit > 0 && report_.written >= options_.limit; }

  // `raw` with runs of white space made one space and the ends trimmed, when its word count is within
  // --min-words and --max-words; else nothing, counted as too short or too long.
  std::optional<std::string> clean_text(const std::string& raw);
  // A pixel box [x1, y1, x2, y2] on a `width` x `height` picture, relative to its centred padded square
  // (the released expand2square: pad (max - min) / 2 whole pixels on the short axis); nothing (counted as
  // invalid_box) when not finite, of no area, or outside the picture.
  std::optional<grounding::Box> square_box(double x1, double y1, double x2, double y2, double width, double height);
  // Seconds [t1, t2] of a `duration`-second medium, relative to the duration; nothing (counted as
  // invalid_span) when not finite, t1 >= t2, outside [0, duration], or duration <= 0.
  std::optional<grounding::Span> relative_span(double t1, double t2, double duration);

  // False (counted as duplicate) when `key` was claimed before.
  bool claim(const std::string& key);
  // Phrasing drawn (seeded) from TASK.txt in the templates folder, filled from `slots`.
  std::string question(const std::string& task, const std::map<std::string, std::string>& slots);
  // Writes `item` with the source's media keys and placeholders.
  void emit(const Item& item);
  // Writes an already well-formed item as is (LLaVA conversations).
  void emit_json(const nlohmann::ordered_json& item);

  ConvertResult finish();

 private:
  ConvertOptions options_;
  std::mt19937_64 rng_;
  std::map<std::string, TemplateSet> templates_;
  std::unordered_set<std::string> seen_;
  std::string out_;
  ConvertReport report_;
};

// The converters of each source family (convert_*.cpp).
void convert_refer(Converter& c);         // refcoco, refcoco+, refcocog
void convert_vg_regions(Converter& c);
void convert_vggss(Converter& c);
void convert_charades_sta(Converter& c);
void convert_didemo(Converter& c);
void convert_activitynet(Converter& c);
void convert_clotho(Converter& c);
void convert_wavcaps(Converter& c);
void convert_llava(Converter& c);

}  // namespace lego::data::convert_detail
