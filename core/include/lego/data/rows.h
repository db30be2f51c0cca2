// Rows of a conversation dataset in the released training format (DESIGN.md, core/data): a JSON array, or
// JSON Lines, of objects with optional media keys and `conversations`:
//   {"id": "...", "NAME": "coco/1.jpg", "conversations": [{"from": "human", "value": "<NAME>\nWhere ...?"},
//                                                          {"from": "gpt", "value": "[0.1, 0.2, 0.5, 0.6]"}]}
// A media key (NAME) is the name of one of the model's modalities (docs/training.md lists the released ones);
// its value is a path, or a list of paths, relative to that modality's root folder. `from` is human or gpt
// (user/assistant are accepted too).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace lego::data {

struct RowMedium {
  std::string modality;  // the model's modality (section name)
  std::filesystem::path file;
};

struct Message {
  bool human = true;
  std::string value;
};

struct Row {
  std::string source;  // the file the row came from
  int64_t index = 0;   // its position in that file, from 0
  std::string id;      // the row's "id", if any
  std::vector<RowMedium> media;
  std::vector<Message> messages;
  // "FILE row N" (N from 1), for messages.
  std::string where() const;
};

// What a bad row did wrong, with where() first; thrown as lego::Error(Format) unless skipping.
using BadRowHandler = std::function<void(const Row& row, const std::string& why)>;

// Reads every row of `file` (a JSON array or JSON Lines). Media keys are those in `roots` (modality ->
// root folder; relative paths in the file are resolved against it). A row that is no object, has no
// `conversations` list of {from, value} strings, a turn from someone else, no assistant turn, or a medium
// that is no string/list of strings is bad: with `on_bad` unset it throws Format naming the file and row,
// otherwise `on_bad` is told and the row is left out. A file that is not JSON throws Format naming it.
std::vector<Row> read_rows(const std::filesystem::path& file, const std::map<std::string, std::filesystem::path>& roots,
                           const BadRowHandler& on_bad = {});

}  // namespace lego::data
