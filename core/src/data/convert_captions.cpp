// Converters of captioned recordings (Clotho, WavCaps: medium -> caption) and of conversations already in
// the training format (LLaVA), which are checked and passed through.
#include <algorithm>
#include <cctype>

#include "convert_context.h"
#include "lego/model/released_defaults.h"

namespace lego::data::convert_detail {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

void caption_item(Converter& c, const std::string& id, const std::string& path, const std::string& raw) {
  const auto caption = c.clean_text(raw);
  if (!caption || !c.claim(path + '\n' + lower(*caption))) return;
  c.emit({id, {path}, c.question("audio_caption", {}), *caption});
}

}  // namespace

void convert_clotho(Converter& c) {
  c.require_inputs(1, 1, "one file: clotho_captions_{development,validation,evaluation}.csv");
  const auto& file = c.inputs()[0];
  const auto rows = read_csv(file, "Clotho captions CSV");
  const size_t name_col = csv_column(rows[0], "file_name", file);
  std::vector<size_t> caption_cols;
  for (size_t i = 0; i < rows[0].size(); ++i) {
    if (rows[0][i].rfind("caption_", 0) == 0) caption_cols.push_back(i);
  }
  if (caption_cols.empty()) bad_input(file, "has no caption_N column in its header");
  for (size_t r = 1; r < rows.size() && !c.full(); ++r) {
    const auto& row = rows[r];
    if (row.size() != rows[0].size()) {
      bad_input(file, "row " + std::to_string(r + 1) + " has " + std::to_string(row.size()) + " fields, the header " +
                          std::to_string(rows[0].size()));
    }
    for (size_t k = 0; k < caption_cols.size() && !c.full(); ++k) {
      c.count_read();
      if (row[name_col].empty()) {
        c.drop(kMissingField);
        continue;
      }
      caption_item(c, "clotho-" + std::to_string(r) + "-" + std::to_string(k + 1), row[name_col], row[caption_cols[k]]);
    }
  }
}

void convert_wavcaps(Converter& c) {
  c.require_inputs(1, 1, "one file: a WavCaps json (as_final.json, fsd_final.json, bbc_final.json, sb_final.json)");
  const auto& file = c.inputs()[0];
  const Json all = read_json(file, "WavCaps annotations");
  const Json* data = &all;
  if (all.is_object() && all.contains("data")) data = &all["data"];
  if (!data->is_array()) bad_input(file, "is not a WavCaps file (an object whose 'data' is a list)");
  for (size_t i = 0; i < data->size() && !c.full(); ++i) {
    const auto& entry = (*data)[i];
    if (!entry.is_object()) bad_input(file, "data entry " + std::to_string(i) + " is not an object");
    c.count_read();
    const auto id = id_text(entry, "id");
    const auto caption = text(entry, "caption");
    if (!id || !caption) {
      c.drop(kMissingField);
      continue;
    }
    // WavCaps ships every recording as <id without extension>.flac (AudioSet ids end in .wav in the json).
    const auto dot = id->rfind('.');
    const auto stem = dot == std::string::npos || dot == 0 ? *id : id->substr(0, dot);
    caption_item(c, "wavcaps-" + stem, stem + ".flac", *caption);
  }
}

void convert_llava(Converter& c) {
  c.require_inputs(1, 1, "one file: a LLaVA conversation json (llava_instruct_150k.json, detail_23k.json, ...)");
  const auto& file = c.inputs()[0];
  const Json all = read_json(file, "LLaVA conversations");
  if (!all.is_array()) bad_input(file, "is not a list of conversations");
  for (size_t i = 0; i < all.size() && !c.full(); ++i) {
    const auto& entry = all[i];
    if (!entry.is_object()) bad_input(file, "entry " + std::to_string(i) + " is not an object");
    c.count_read();
    const auto id = id_text(entry, "id");
    const auto turns = entry.find("conversations");
    if (!id || turns == entry.end() || !turns->is_array()) {
      c.drop(kMissingField);
      continue;
    }
    // Turns alternate human, gpt, ... from a human question to a gpt answer, every value non-empty text.
    bool turns_ok = turns->size() >= 2 && turns->size() % 2 == 0;
    for (size_t k = 0; turns_ok && k < turns->size(); ++k) {
      const auto& t = (*turns)[k];
      const auto from = t.is_object() ? text(t, "from") : std::nullopt;
      const auto value = t.is_object() ? text(t, "value") : std::nullopt;
      turns_ok = from && value && *from == (k % 2 == 0 ? "human" : "gpt") &&
                 value->find_first_not_of(" \t\r\n") != std::string::npos;
    }
    if (!turns_ok) {
      c.drop(kBadTurns);
      continue;
    }
    nlohmann::ordered_json item;
    item["id"] = *id;
    bool media_ok = true;
    std::string all_text;
    for (const auto& t : *turns) all_text += t["value"].get<std::string>() + '\n';
    const auto& first = (*turns)[0]["value"].get_ref<const std::string&>();
    for (const auto& medium : released_media()) {
      const auto path = text(entry, medium.key.c_str());
      const bool mentioned = all_text.find(medium.placeholder) != std::string::npos;
      if (path && !path->empty()) {
        // The medium's placeholder opens (or closes) the first question.
        if (first.find(medium.placeholder) == std::string::npos) {
          c.drop(kMissingPlaceholder);
          media_ok = false;
          break;
        }
        item[medium.key] = c.options().media_prefix + *path;
      } else if (mentioned || entry.contains(medium.key)) {
        c.drop(kMissingField);
        media_ok = false;
        break;
      }
    }
    if (!media_ok || !c.claim(*id)) continue;
    item["conversations"] = nlohmann::ordered_json::array();
    for (const auto& t : *turns) item["conversations"].push_back({{"from", t.at("from").get<std::string>()}, {"value", t.at("value").get<std::string>()}});
    c.emit_json(item);
  }
}

}  // namespace lego::data::convert_detail
