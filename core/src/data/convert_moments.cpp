// Converters of moments in clips: Charades-STA and DiDeMo (sentence -> span) and ActivityNet Captions
// (clip -> every event's span and sentence, dense captioning).
#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_map>

#include "convert_context.h"
#include "lego/model/released_defaults.h"

namespace lego::data::convert_detail {
namespace {

// A sentence as the {event} of "When does {event}?": no final full stop.
std::string event_phrase(std::string s) {
  while (!s.empty() && (s.back() == '.' || s.back() == ' ')) s.pop_back();
  return s;
}

// DiDeMo cuts each clip into 5-second segments, 6 of them for the 30 s it annotates (Hendricks et al.
// 2017); `num_segments` in an entry overrides the count.
constexpr int64_t kDidemoSegments = 6;

}  // namespace

void convert_charades_sta(Converter& c) {
  c.require_inputs(2, 2, "two files: charades_sta_{train,test}.txt then the Charades CSV (Charades_v1_train.csv) with 'id' and 'length'");
  const auto& sta_file = c.inputs()[0];
  const auto& csv_file = c.inputs()[1];
  const auto rows = read_csv(csv_file, "Charades CSV");
  const size_t id_col = csv_column(rows[0], "id", csv_file);
  const size_t length_col = csv_column(rows[0], "length", csv_file);
  std::unordered_map<std::string, double> lengths;
  for (size_t r = 1; r < rows.size(); ++r) {
    const auto& row = rows[r];
    if (row.size() <= std::max(id_col, length_col)) bad_input(csv_file, "row " + std::to_string(r + 1) + " has too few columns");
    char* end = nullptr;
    const double length = std::strtod(row[length_col].c_str(), &end);
    if (row[length_col].empty() || *end != 0) {
      bad_input(csv_file, "row " + std::to_string(r + 1) + " has a length that is not a number: '" + row[length_col] + "'");
    }
    lengths[row[id_col]] = length;
  }
  const auto bytes = read_input(sta_file, "Charades-STA annotations");
  std::istringstream in(bytes);
  std::string line;
  size_t number = 0;
  while (std::getline(in, line) && !c.full()) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const auto hashes = line.find("##");
    std::istringstream head(line.substr(0, hashes == std::string::npos ? 0 : hashes));
    std::string clip, start_text, end_text, extra;
    double start = 0, end = 0;
    if (hashes == std::string::npos || !(head >> clip >> start_text >> end_text) || (head >> extra)) {
      bad_input(sta_file, "line " + std::to_string(number) + " is not 'VIDEO START END##SENTENCE'");
    }
    char* s_end = nullptr;
    char* e_end = nullptr;
    start = std::strtod(start_text.c_str(), &s_end);
    end = std::strtod(end_text.c_str(), &e_end);
    if (*s_end != 0 || *e_end != 0) bad_input(sta_file, "line " + std::to_string(number) + " has a time that is not a number");
    c.count_read();
    const auto length = lengths.find(clip);
    if (length == lengths.end()) {
      c.drop(kUnknownReference);
      continue;
    }
    const auto span = c.relative_span(start, end, length->second);
    if (!span) continue;
    const auto sentence = c.clean_text(line.substr(hashes + 2));
    if (!sentence) continue;
    const auto answer = grounding::format_span(*span);
    if (!c.claim(clip + '\n' + answer + '\n' + *sentence)) continue;
    c.emit({"charades-sta-" + std::to_string(number), {clip + ".mp4"}, c.question("temporal", {{"event", event_phrase(*sentence)}}),
            answer});
  }
}

void convert_didemo(Converter& c) {
  c.require_inputs(1, 1, "one file: {train,val,test}_data.json");
  const auto& file = c.inputs()[0];
  const Json all = read_json(file, "DiDeMo annotations");
  if (!all.is_array()) bad_input(file, "is not a list of annotations");
  for (size_t i = 0; i < all.size() && !c.full(); ++i) {
    const auto& entry = all[i];
    if (!entry.is_object()) bad_input(file, "entry " + std::to_string(i) + " is not an object");
    c.count_read();
    const auto clip = text(entry, didemo_clip_field().c_str());
    const auto description = text(entry, "description");
    const auto times = entry.find("times");
    if (!clip || clip->empty() || !description || times == entry.end() || !times->is_array() || times->empty()) {
      c.drop(kMissingField);
      continue;
    }
    // The annotators' most frequent [start, end] segment pair (the first of equally frequent ones).
    std::vector<std::pair<double, double>> pairs;
    for (const auto& t : *times) {
      if (t.is_array() && t.size() == 2 && t[0].is_number() && t[1].is_number()) pairs.emplace_back(t[0].get<double>(), t[1].get<double>());
    }
    if (pairs.empty()) {
      c.drop(kMissingField);
      continue;
    }
    size_t best = 0, best_count = 0;
    for (size_t k = 0; k < pairs.size(); ++k) {
      const auto n = static_cast<size_t>(std::count(pairs.begin(), pairs.end(), pairs[k]));
      if (n > best_count) {
        best = k;
        best_count = n;
      }
    }
    const double segments = number(entry, "num_segments").value_or(static_cast<double>(kDidemoSegments));
    const auto [first, last] = pairs[best];
    if (first != std::floor(first) || last != std::floor(last)) {
      c.drop(kInvalidSpan);
      continue;
    }
    // Segment indices: the moment runs from the start of `first` to the end of `last`.
    const auto span = c.relative_span(first, last + 1, segments);
    if (!span) continue;
    const auto sentence = c.clean_text(*description);
    if (!sentence) continue;
    const auto answer = grounding::format_span(*span);
    if (!c.claim(*clip + '\n' + answer + '\n' + *sentence)) continue;
    const auto id = id_text(entry, "annotation_id").value_or(std::to_string(i));
    c.emit({"didemo-" + id, {*clip}, c.question("temporal", {{"event", event_phrase(*sentence)}}), answer});
  }
}

void convert_activitynet(Converter& c) {
  c.require_inputs(1, 1, "one file: train.json, val_1.json or val_2.json");
  const auto& file = c.inputs()[0];
  const Json all = read_json(file, "ActivityNet Captions annotations");
  if (!all.is_object()) bad_input(file, "is not an object of videos");
  for (const auto& [clip, entry] : all.items()) {
    if (c.full()) break;
    if (!entry.is_object()) bad_input(file, "clip '" + clip + "' is not an object");
    const auto duration = number(entry, "duration");
    const auto stamps = entry.find("timestamps");
    const auto sentences = entry.find("sentences");
    if (!duration || stamps == entry.end() || sentences == entry.end() || !stamps->is_array() || !sentences->is_array() ||
        stamps->size() != sentences->size() || stamps->empty()) {
      c.count_read();
      c.drop(kMissingField);
      continue;
    }
    struct Event {
      grounding::Span span;
      std::string sentence;
    };
    std::vector<Event> events;
    for (size_t k = 0; k < stamps->size(); ++k) {
      c.count_read();
      const auto& t = (*stamps)[k];
      const auto& s = (*sentences)[k];
      if (!t.is_array() || t.size() != 2 || !t[0].is_number() || !t[1].is_number() || !s.is_string()) {
        c.drop(kMissingField);
        continue;
      }
      const auto span = c.relative_span(t[0].get<double>(), t[1].get<double>(), *duration);
      if (!span) continue;
      const auto sentence = c.clean_text(s.get<std::string>());
      if (!sentence) continue;
      events.push_back({*span, *sentence});
    }
    if (events.empty()) continue;
    std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) { return a.span.t1 < b.span.t1; });
    std::string answer;
    for (const auto& e : events) answer += (answer.empty() ? "" : " ") + grounding::format_span(e.span) + " " + e.sentence;
    if (!c.claim(clip)) continue;
    c.emit({"activitynet-" + clip, {clip + ".mp4"}, c.question("dense_caption", {}), answer});
  }
}

}  // namespace lego::data::convert_detail
