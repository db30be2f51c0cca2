// SynthGround: a generated grounding benchmark in the released training format (`lego synth`; DESIGN.md,
// core/data). Core draws scenes (lego/sdk/synth.h) and words questions from the task templates; the
// model's modalities render the scenes and say what their files ground, and tasks follow from that alone:
//   rec                 a medium with boxes: a referring expression in, the object's box out
//   caption             a medium with boxes: a short description whose phrases carry their boxes
//   temporal            a medium with a span: "When does <event>?", the span out
//   sound_localization  a medium singling out an object plus a medium with boxes of the same scene:
//                       the box of the object singled out
// Each split (train, val, test) of each task is one JSON file, OUT/SPLIT-TASK.json, with its media under
// OUT/media/SPLIT/ (paths relative to the JSON file). Scenes of different splits never share a seed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lego/sdk/modality.h"

namespace lego::data {

inline constexpr const char* kSynthTasks[] = {"rec", "caption", "temporal", "sound_localization"};
inline constexpr const char* kSynthSplits[] = {"train", "val", "test"};

struct SynthOptions {
  std::filesystem::path out;
  std::filesystem::path templates;  // folder of rec.txt, caption.txt, temporal.txt, sound_localization.txt
  uint64_t seed = 0;
  // Rows per split and task: "small" or "full" presets, then `counts` ("train.rec" -> n) over them.
  std::string size = "small";
  std::map<std::string, int64_t> counts;
  int max_objects = 4;  // objects per scene at most, 1-4 (1: a curriculum's first, single-object step)
  int threads = 2;
};

struct SynthSummary {
  std::map<std::string, int64_t> rows;  // "SPLIT-TASK" -> rows written
  std::vector<std::string> skipped;     // tasks no modality can render, with why
};

// The rows per "SPLIT.TASK" of a preset; throws InvalidArgument for an unknown preset.
std::map<std::string, int64_t> synth_preset(const std::string& size);

// Writes the benchmark with `modalities` (name -> modality, e.g. a model config's sections). Throws
// lego::Error for bad options; OUT is written whole or not at all (a staging folder renamed into place).
SynthSummary write_synthground(const std::vector<std::pair<std::string, std::shared_ptr<Modality>>>& modalities,
                               const SynthOptions& options,
                               const std::function<void(const std::string&)>& progress = {});

}  // namespace lego::data
