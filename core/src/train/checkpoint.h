// Training checkpoints and the metrics log (private to core/src/train).
//
// A checkpoint is a folder train.out/checkpoints/step-NNNNNNNN holding trainable.safetensors (the trained
// parameters by name), optimizer.pt (AdamW's state), rng.safetensors (the CPU generator) and state.json
// (step and data position). It is built in a hidden staging folder, fsynced and renamed into place, so a
// folder with that name is always complete; a run killed while writing leaves only the staging folder,
// which resuming ignores and removes.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "lego/train/trainer.h"

namespace lego::train {

struct TrainState {
  int64_t step = 0;   // optimizer steps done
  int64_t epoch = 0;  // epoch of the next batch
  int64_t batch = 0;  // next batch within that epoch
};

std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& dir);

// How a run's optimizer state is kept: whole (every rank holds it; rank 0 saves optimizer.pt), or sharded
// over `ranks` (train.zero_stage >= 1; each rank's part saved as optimizer-rank-R.pt).
struct Sharding {
  int rank = 0;
  int ranks = 1;
  int zero_stage = 0;
  bool sharded() const { return zero_stage > 0 && ranks > 1; }
};

// Writes the checkpoint of `state`. For a sharded run, `shards` are the ranks' optimizer files (written
// by them beforehand, in rank order), moved into the checkpoint; otherwise `optimizer` is saved.
void save_checkpoint(const std::filesystem::path& dir, const TrainState& state,
                     const std::vector<std::pair<std::string, torch::Tensor>>& params, torch::optim::Optimizer& optimizer,
                     int64_t keep, const Sharding& sharding = {}, const std::vector<std::filesystem::path>& shards = {});
// Fills `params` and `optimizer` (this rank's part, for a sharded run) from `checkpoint` and restores the
// RNG; a tensor that is missing or has another shape, or a checkpoint sharded otherwise than this run, is
// a Format error naming the checkpoint.
TrainState load_checkpoint(const std::filesystem::path& checkpoint,
                           const std::vector<std::pair<std::string, torch::Tensor>>& params,
                           torch::optim::Optimizer& optimizer, const Sharding& sharding = {});

// The parameters of a checkpoint (trainable.safetensors) into `params`, by name; nothing else.
void load_checkpoint_parameters(const std::filesystem::path& checkpoint,
                                const std::vector<std::pair<std::string, torch::Tensor>>& params);

// metrics.jsonl: one JSON object per logged step. A resumed run keeps the lines up to its step.
class MetricsLog {
 public:
  MetricsLog(const std::filesystem::path& file, int64_t keep_until_step);
  void write(const Progress& p);

 private:
  std::ofstream out_;
};

}  // namespace lego::train
