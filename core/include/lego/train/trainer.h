// Training: one stage of a LEGO model run from a config (DESIGN.md, "Training"; the keys are in
// docs/training.md). A stage starts from a model directory, trains the parameters its tags name on
// conversation data in the released format, writes checkpoints it can resume from, and ends with a model
// directory of its own, which the next stage (or `lego infer`) starts from.
//
// What trains is named by tags: `encoder` (the modalities' encoders: frozen in every released stage),
// `adapter` (their Q-Formers, positions and projectors), `llm` (every LLM parameter) and `new_tokens` (the
// rows of the embedding that belong to the added tokens, with the text around media detached: the
// release's stage 1). Modalities take part through the plugin contract alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lego/config/config.h"

namespace lego::host {
class PluginHost;
}

namespace lego::train {

// Where a running stage is, for progress bars and logs.
struct Progress {
  std::string stage;
  int64_t step = 0;         // optimizer steps done
  int64_t total_steps = 0;
  int64_t epoch = 0;
  double loss = 0;          // mean over the last log interval
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_s = 0;  // input tokens (media tokens included) per second of the interval
  double elapsed_s = 0;
  double eta_s = 0;
  int64_t skipped_rows = 0; // bad rows left out so far (data.skip_bad)
};
using ProgressCallback = std::function<void(const Progress&)>;
// Lines worth a user's attention (skipped rows, fully masked rows, resuming): one line each.
using NoticeCallback = std::function<void(const std::string&)>;

struct StageResult {
  std::filesystem::path model_dir;  // train.out/model
  int64_t steps = 0;
  double final_loss = 0;
  int64_t examples = 0;
  int64_t skipped_rows = 0;
  int64_t fully_masked_rows = 0;
  int64_t truncated_rows = 0;
  bool resumed = false;
};

struct Callbacks {
  ProgressCallback progress;
  NoticeCallback notice;
};

// Runs the stage `config` describes; with `resume`, continues from the newest complete checkpoint under
// train.out (a fresh start when there is none). Throws lego::Error naming the file, line and key of a bad
// config, and the file and row of bad data unless data.skip_bad.
StageResult run_stage(const config::Config& config, std::shared_ptr<const host::PluginHost> host, bool resume,
                      const Callbacks& callbacks = {});

// A model directory at `out` from a checkpoint of the stage `config` describes: the stage's starting model
// with the checkpoint's trained parameters (the newest complete checkpoint under train.out when
// `checkpoint` is empty). Sharded runs (train.zero_stage) shard only optimizer state and gradients, so
// their checkpoints hold whole parameters too. Returns the checkpoint used.
std::filesystem::path consolidate(const config::Config& config, std::shared_ptr<const host::PluginHost> host,
                                  const std::filesystem::path& checkpoint, const std::filesystem::path& out);

// What `lego data check` reports about one data file.
struct SourceReport {
  std::string file;
  bool previous = false;      // a previous stage's source
  int64_t rows = 0;           // rows read
  int64_t bad_rows = 0;       // rows refused (malformed, media missing or unreadable, too long)
  int64_t media = 0;          // media named
  int64_t media_missing = 0;
  int64_t media_unreadable = 0;
  int64_t truncated = 0;
  int64_t fully_masked = 0;
  int64_t tokens_min = 0, tokens_max = 0;
  double tokens_mean = 0;
  std::vector<std::string> errors;  // the first few bad rows, one line each
};

// Validates the stage's data without training: every row read and templated, every medium found and (with
// `load_media`) loaded by its modality.
std::vector<SourceReport> check_data(const config::Config& config, std::shared_ptr<const host::PluginHost> host,
                                     bool load_media = true);

}  // namespace lego::train
