// Dataset conversion: a public dataset's own annotation files -> the released training JSON (`lego convert`;
// DESIGN.md, core/data). Each source is read in its published format (RefCOCO's refs pickle and COCO
// instances, Visual Genome's region descriptions, Charades-STA, DiDeMo, ActivityNet Captions, Clotho,
// WavCaps, VGGSS, LLaVA conversations; docs/datasets.md says which files each takes) and written as items
//   {"id", "<medium key>": relative path, "conversations": [{"from": "human", "value": "<placeholder>\n..."},
//                                                           {"from": "gpt", "value": "..."}]}
// with boxes relative to the padded square picture (3 decimals) and spans relative to the duration
// (2 decimals), questions worded from configs/templates/TASK.txt by a seeded draw. Entries that cannot
// make a valid item (bad box or span, duplicate, text too short or long, missing field) are dropped and
// counted per reason; files that are not in the source's format are a lego::Error naming file and entry.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lego::data {

struct ConvertOptions {
  std::string source;                             // one of convert_sources()
  std::vector<std::filesystem::path> inputs;      // the source's files (docs/datasets.md)
  std::filesystem::path templates_dir;            // holds TASK.txt phrasings (configs/templates)
  uint64_t seed = 0;                              // draws the phrasing of each question
  uint64_t limit = 0;                             // write at most this many items (0: all)
  uint64_t min_words = 1;                         // texts (phrases, captions) with fewer words are dropped
  uint64_t max_words = 100;                       // ... and with more
  std::string split = "train";                    // refcoco family: the refs of this split ("" all)
  std::string media_prefix;                       // put in front of every media path written
};

struct ConvertReport {
  std::string source;
  uint64_t read = 0;     // entries the inputs hold (annotations, sentences, captions, conversations)
  uint64_t written = 0;  // items written
  std::map<std::string, uint64_t> dropped;  // reason -> count: invalid_box, invalid_span, duplicate, ...

  uint64_t dropped_total() const;
  // {"source", "read", "written", "dropped_total", "dropped": {reason: n}} as JSON text.
  std::string to_json() const;
  // "refcoco: 12 read, 10 written, 2 dropped (duplicate 1, invalid_box 1)"
  std::string summary() const;
};

struct ConvertResult {
  std::string json;  // the items, a JSON array (one item per line)
  ConvertReport report;
};

// The sources convert reads, as named by `--from`.
const std::vector<std::string>& convert_sources();

// Converts `options.inputs`; InvalidArgument for an unknown source or wrong number of inputs, NotFound or
// Format (naming the file and the entry) for inputs that are missing or not in the source's format.
ConvertResult convert(const ConvertOptions& options);

}  // namespace lego::data
