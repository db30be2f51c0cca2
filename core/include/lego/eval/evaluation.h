// Evaluation of a model on grounding data in the released format (`lego eval`; DESIGN.md, core/grounding
// metrics). Each row's human turns are the question, its last assistant turn the reference answer; the
// model answers in batches (greedy, the inference template) and the answers are scored by the task:
//   rec, sound_localization  the first box of the answer against the reference's: Acc@IoU>=0.5, mean IoU
//   rec3d                    the first 3-D box [x1, y1, z1, x2, y2, z2]: Acc@IoU>=0.25 and >=0.5, mean IoU
//   temporal                 the first span: R@1 at IoU 0.3 / 0.5 / 0.7, mean IoU
//   caption                  word F1 of the text without its boxes, and the share of reference boxes that a
//                            predicted box matches at IoU>=0.5 (grounded recall)
// Beside each metric the chance baseline: the same metric for answers drawn at random from the data's own
// reference answers (the distribution the model was trained on), averaged over several seeded draws.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace lego {
class Pipeline;
}

namespace lego::eval {

struct EvalOptions {
  std::string task;  // rec, temporal, sound_localization (or sound-loc), caption, rec3d
  std::filesystem::path data;
  std::map<std::string, std::filesystem::path> roots;  // modality -> root folder (default: the data file's)
  int64_t batch_size = 8;
  int64_t max_new_tokens = 64;
  int64_t limit = 0;  // 0: every row
  uint64_t seed = 0;  // of the chance baseline's draws
};

struct EvalSample {
  std::string id;
  std::string question;
  std::string reference;
  std::string prediction;
  double score = 0;  // IoU (rec, temporal, sound_localization) or word F1 (caption)
};

struct EvalReport {
  std::string task;
  std::string data;
  int64_t samples = 0;
  std::map<std::string, double> metrics;
  std::map<std::string, double> chance;
  std::vector<EvalSample> predictions;
  double seconds = 0;
};

// The canonical task name ("sound-loc" -> "sound_localization"); throws InvalidArgument for others.
std::string canonical_task(const std::string& task);

// Evaluates `pipeline` on `options.data`; `progress(done, total)` after each batch.
EvalReport evaluate(Pipeline& pipeline, const EvalOptions& options,
                    const std::function<void(int64_t, int64_t)>& progress = {});

// Scores one answer against its reference for `task` (exposed for tests and the chance baseline).
double score_answer(const std::string& task, const std::string& prediction, const std::string& reference);

}  // namespace lego::eval
