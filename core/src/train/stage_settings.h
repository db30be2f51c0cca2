// The settings of one training stage, read from its config (private to core/src/train).
#pragma once

#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "lego/config/config.h"
#include "lego/data/examples.h"

namespace lego::train {

struct WeightedSource {
  std::filesystem::path file;
  double weight = 1;
};

struct StageSettings {
  std::string name;
  std::filesystem::path model_dir;
  torch::Device device = torch::kCPU;
  std::map<std::string, std::string> model_overrides;  // the config's modality sections

  std::vector<WeightedSource> train, previous;
  double previous_rate = 0;
  std::map<std::string, std::filesystem::path> folders;  // modality -> root folder given in [data]
  data::ExampleOptions examples;
  bool skip_bad = false;
  bool group_by_length = true;
  int workers = 2;
  int prefetch = 2;

  std::filesystem::path out;
  int64_t epochs = 1;
  int64_t max_steps = 0;
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  uint64_t seed = 42;
  int64_t save_every = 500;
  int64_t keep_checkpoints = 2;
  int64_t log_every = 10;
  bool activation_checkpointing = false;
  // Data parallel (several ranks): gradients are summed in buckets of about this many bytes, and a rank
  // that waits longer than the timeout for the others ends the run with an error naming it.
  int64_t bucket_bytes = int64_t{25} << 20;
  int64_t dist_timeout_s = 1800;
  // ZeRO over several ranks: 1 shards the optimizer state, 2 the gradients too (each summed only on the
  // rank that owns its parameter); 0 keeps both whole on every rank.
  int zero_stage = 0;
  // train.precision: fp32; bf16 (DeepSpeed's bf16 mode: the model in bf16, fp32 master weights in the
  // optimizer); or bf16 autocast over fp32 weights (CUDA only).
  enum class Precision { Fp32, Bf16, Bf16Autocast };
  Precision precision = Precision::Fp32;
  // Where to write the loss and the gradients of the first optimizer step (before clipping), for
  // gradient-parity checks against a reference implementation; empty: nowhere.
  std::filesystem::path dump_gradients;

  double lr = 2e-5;
  double weight_decay = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double warmup_ratio = 0.03;
  std::string schedule = "cosine";
  double max_grad_norm = 1.0;

  std::vector<std::string> tags;
  bool detach_text = false;
};

// Reads `config` (paths relative to its file). `modalities` are the model's modality sections, known
// once model.ini is read: every other section than model/data/train/optim/stage must be one of them.
// Unknown keys are refused naming the file, line and key.
StageSettings read_stage_settings(const config::Config& config);

// The line of `file` that sets `key` ("section.key"), 0 when it cannot be found.
int line_of_key(const std::filesystem::path& file, const std::string& key);

}  // namespace lego::train
