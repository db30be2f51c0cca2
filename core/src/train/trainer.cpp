#include "lego/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <regex>
#include <set>

#include "checkpoint.h"
#include "lego/data/loader.h"
#include "lego/dist/group.h"
#include "lego/dist/world.h"
#include "lego/fs/atomic_file.h"
#include "lego/host/plugin_host.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/error.h"
#include "lego/train/master_weights.h"
#include "lego/weights/tensor_source.h"
#include "stage_settings.h"

namespace lego::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// bf16 autocast on CUDA for the forward pass (train.precision = bf16-autocast).
class AutocastScope {
 public:
  AutocastScope(bool on, torch::Device device) : on_(on && device.is_cuda()) {
    if (!on_) return;
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
  }
  ~AutocastScope() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_;
};

double schedule_factor(const StageSettings& s, int64_t step, int64_t total) {
  // HF's schedulers: the factor of optimizer step `step` (from 0); warmup from 0 over ceil(ratio * total).
  const auto warmup = static_cast<int64_t>(std::ceil(s.warmup_ratio * static_cast<double>(total)));
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (s.schedule == "constant") return 1.0;
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (s.schedule == "linear") return std::max(0.0, 1.0 - progress);
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

// The dtype the stage holds the model in: bf16 for train.precision = bf16 (the whole model, as DeepSpeed's
// bf16 mode converts it; the trained tensors get fp32 master copies beside it), else fp32.
torch::ScalarType model_dtype(const StageSettings& s) {
  return s.precision == StageSettings::Precision::Bf16 ? torch::kBFloat16 : torch::kFloat32;
}

// Everything a stage reads: rows turned into examples, per source, with what was left out.
struct StageData {
  std::vector<data::Row> rows;
  std::vector<data::Example> examples;  // one per row
  std::vector<bool> previous;           // per example: from a previous stage's source
  std::vector<double> weight;           // per example: its source's weight
  int64_t bad = 0, fully_masked = 0, truncated = 0;
};

std::map<std::string, std::filesystem::path> roots_for(const StageSettings& s, const Pipeline& p,
                                                      const std::filesystem::path& file) {
  std::map<std::string, std::filesystem::path> roots;
  for (const auto& name : p.media_order()) {
    auto it = s.folders.find(name);
    roots[name] = it != s.folders.end() ? it->second : file.parent_path();
  }
  return roots;
}

void check_folders(const StageSettings& s, const Pipeline& p, const config::Config& c) {
  for (const auto& [name, dir] : s.folders) {
    const auto& order = p.media_order();
    if (std::find(order.begin(), order.end(), name) == order.end()) {
      const auto key = "data." + name + "_folder";
      const int line = line_of_key(c.source(), key);
      throw Error(ErrorKind::Format, c.source().string() + (line > 0 ? ":" + std::to_string(line) : "") + ": " + key +
                                         ": the model has no modality '" + name + "'");
    }
  }
}

StageData read_stage_data(const StageSettings& s, const Pipeline& p, const NoticeCallback& notice) {
  StageData d;
  data::ExampleBuilder builder(p, s.examples);
  auto add = [&](const WeightedSource& src, bool previous) {
    auto on_bad = [&](const data::Row& row, const std::string& why) {
      ++d.bad;
      if (notice) notice("skipped " + row.where() + ": " + why);
    };
    auto rows = data::read_rows(src.file, roots_for(s, p, src.file),
                                s.skip_bad ? data::BadRowHandler(on_bad) : data::BadRowHandler());
    for (auto& row : rows) {
      bool missing = false;
      for (const auto& m : row.media) {
        std::error_code ec;
        if (!std::filesystem::is_regular_file(m.file, ec)) {
          const auto why = row.where() + ": " + m.modality + " file not found: " + m.file.string();
          if (!s.skip_bad) throw Error(ErrorKind::NotFound, why);
          if (notice) notice("skipped " + why);
          ++d.bad;
          missing = true;
          break;
        }
      }
      if (missing) continue;
      data::Example ex;
      try {
        ex = builder.build(row);
      } catch (const Error& e) {
        if (!s.skip_bad) throw;
        ++d.bad;
        if (notice) notice(std::string("skipped ") + e.what());
        continue;
      }
      if (ex.truncated) ++d.truncated;
      if (ex.targets == 0) {
        ++d.fully_masked;
        if (notice) notice(row.where() + ": every label is masked (template or truncation); it teaches nothing and is left out");
        continue;
      }
      d.rows.push_back(std::move(row));
      d.examples.push_back(std::move(ex));
      d.previous.push_back(previous);
      d.weight.push_back(src.weight);
    }
  };
  for (const auto& src : s.train) add(src, false);
  for (const auto& src : s.previous) add(src, true);
  return d;
}

// The examples of one epoch: every current example, plus previous-stage examples drawn by source weight so
// that they make up `previous_rate` of the epoch (the paper's alpha), in a seeded order.
std::vector<size_t> epoch_pool(const StageSettings& s, const StageData& d, int64_t epoch) {
  std::vector<size_t> current, previous;
  std::vector<double> weights;
  for (size_t i = 0; i < d.examples.size(); ++i) {
    if (d.previous[i]) {
      previous.push_back(i);
      weights.push_back(d.weight[i]);
    } else {
      current.push_back(i);
    }
  }
  if (current.empty()) throw Error(ErrorKind::Format, "no usable training example in data.train");
  std::vector<size_t> pool = current;
  if (s.previous_rate > 0 && !previous.empty()) {
    const auto n = static_cast<size_t>(
        std::llround(s.previous_rate / (1 - s.previous_rate) * static_cast<double>(current.size())));
    std::mt19937_64 rng(s.seed * 7919ULL + static_cast<uint64_t>(epoch));
    std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
    for (size_t k = 0; k < n; ++k) pool.push_back(previous[pick(rng)]);
  }
  return pool;
}

uint64_t media_seed(uint64_t seed, int64_t epoch, size_t example, size_t medium) {
  uint64_t h = seed ^ 0x9E3779B97F4A7C15ULL;
  for (uint64_t v : {static_cast<uint64_t>(epoch), static_cast<uint64_t>(example), static_cast<uint64_t>(medium)}) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
  }
  return h;
}

struct Trainable {
  std::vector<std::pair<std::string, torch::Tensor>> params;  // in a fixed order
};

Trainable select_trainable(const StageSettings& s, Pipeline& p) {
  auto has = [&](const char* tag) { return std::find(s.tags.begin(), s.tags.end(), tag) != s.tags.end(); };
  Trainable t;
  auto& net = p.llm().net;
  for (auto& param : net->parameters()) param.set_requires_grad(false);
  std::set<const void*> seen;
  auto take = [&](const std::string& name, torch::Tensor param) {
    if (!seen.insert(param.unsafeGetTensorImpl()).second) return;
    param.set_requires_grad(true);
    t.params.emplace_back(name, param);
  };
  if (has("llm")) {
    for (const auto& item : net->named_parameters()) take(item.key(), item.value());
  } else if (has("new_tokens")) {
    auto weight = net->model->embed_tokens->weight;
    const auto& added = p.tokenizer().added_tokens();
    const int64_t first_new = p.tokenizer().vocab_size() - static_cast<int64_t>(added.size());
    if (added.empty()) throw Error(ErrorKind::InvalidArgument, "stage.train has new_tokens but the tokenizer adds none");
    // Only the added tokens' rows learn: the others' gradient is zeroed as it arrives.
    auto mask = torch::zeros({weight.size(0), 1}, weight.options());
    mask.narrow(0, first_new, weight.size(0) - first_new).fill_(1);
    take("model.embed_tokens.weight", weight);  // first: a hook needs a tensor that requires grad
    weight.register_hook([mask](torch::Tensor g) { return g * mask; });
  }
  for (const auto& name : p.media_order()) {
    auto& m = p.modality(name);
    for (auto& [n, param] : m.encoder_parameters()) param.set_requires_grad(false);
    for (auto& [n, param] : m.adapter_parameters()) param.set_requires_grad(false);
    if (has("encoder")) {
      m.set_encoder_trainable(true);
      for (auto& [n, param] : m.encoder_parameters()) take(n, param);
    }
    if (has("adapter")) {
      for (auto& [n, param] : m.adapter_parameters()) take(n, param);
    }
    m.train(has("adapter") || has("encoder"));
  }
  if (t.params.empty()) throw Error(ErrorKind::InvalidArgument, "stage.train selects no parameter of the model");
  return t;
}

// Every tensor of the model (LLM and modalities), for the model directory a stage ends with.
std::vector<std::pair<std::string, torch::Tensor>> all_tensors(Pipeline& p) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : p.llm().net->named_parameters()) out.emplace_back(item.key(), item.value().detach());
  for (const auto& name : p.media_order()) {
    auto& m = p.modality(name);
    for (auto& [n, t] : m.encoder_parameters()) out.emplace_back(n, t.detach());
    for (auto& [n, t] : m.adapter_parameters()) out.emplace_back(n, t.detach());
  }
  return out;
}

// `trained`: the trained tensors' values by name where the model holds them rounded (bf16 training keeps
// them in fp32 beside it); every other tensor is written as the model holds it.
void write_model_dir(Pipeline& p, const std::filesystem::path& target, const std::string& stage,
                     const std::vector<std::pair<std::string, torch::Tensor>>& trained = {}) {
  fs::StagedDirectory staged(target);
  const auto& src = p.llm().dir;
  // The model learnt the training form's whitespace: it is asked the same way (Pipeline::prompt).
  auto ini = config::read_file(src / "model.ini");
  ini.set("model.prompt_format", "training");
  fs::write_file_atomically(staged.path() / "model.ini", ini.to_ini());
  const auto tokenizer = p.llm().config.get_string("tokenizer.file", "tokenizer.model");
  std::filesystem::copy_file(src / tokenizer, staged.path() / tokenizer);
  auto tensors = all_tensors(p);
  const std::map<std::string, torch::Tensor> exact(trained.begin(), trained.end());
  for (auto& [n, t] : tensors) {
    if (auto it = exact.find(n); it != exact.end()) t = it->second;
    t = t.to(torch::kCPU).contiguous();
  }
  weights::write_safetensors(staged.path() / "model.safetensors", tensors,
                             {{"format", "pt"}, {"producer", "lego train"}, {"stage", stage}});
  staged.commit();
}

}  // namespace

StageResult run_stage(const config::Config& config, std::shared_ptr<const host::PluginHost> host, bool resume,
                      const Callbacks& callbacks) {
  auto s = read_stage_settings(config);
  // Data parallel when a launcher says so: each rank trains on its share of every global batch.
  const auto world = dist::detect_world();
  std::unique_ptr<dist::Group> group;
  if (world.distributed()) {
    // One GPU per rank: "cuda" means this node's GPU of the rank's LOCAL_RANK.
    if (s.device.is_cuda() && !s.device.has_index()) s.device = torch::Device(torch::kCUDA, static_cast<int8_t>(world.local_rank));
    group = dist::Group::connect(world, std::chrono::seconds(s.dist_timeout_s), s.device);
  }
  const bool lead = world.rank == 0;  // writes the config, metrics, checkpoints and the model
  const int64_t ranks = world.size;
  Callbacks cb = callbacks;
  if (!lead) {
    cb.progress = nullptr;
    if (callbacks.notice) cb.notice = [&callbacks, r = world.rank](const std::string& line) { callbacks.notice("rank " + std::to_string(r) + ": " + line); };
  }
  LoadOptions load;
  load.device = s.device;
  load.dtype = model_dtype(s);  // bf16-autocast keeps fp32 weights and casts in the forward pass
  load.overrides = s.model_overrides;
  auto pipeline = Pipeline::load(s.model_dir, load, host);
  if (pipeline->llm().options.quantized()) {
    throw Error(ErrorKind::Unsupported, s.model_dir.string() + ": " + llm::weight_format_name(pipeline->llm().options.weight_format()) +
                                            " weights are for inference; train the dense model it was quantised from");
  }
  check_folders(s, *pipeline, config);
  // Training mode for the LLM, trained or not: gradients pass through it to the adapters either way
  // (nn::attention computes half-precision CPU attention in float32 for it).
  pipeline->llm().net->train(true);
  torch::manual_seed(s.seed);

  if (lead) {
    std::filesystem::create_directories(s.out);
    fs::write_file_atomically(s.out / "config.ini", config.to_ini());
  }
  // Every rank reads the same rows; the lead says what it skipped.
  auto data = read_stage_data(s, *pipeline, lead ? callbacks.notice : NoticeCallback());
  auto trainable = select_trainable(s, *pipeline);

  // ZeRO: each trainable tensor is owned by one rank (largest first, to the least loaded), which alone keeps
  // its optimizer state, steps it and sends it to the others.
  const Sharding sharding{world.rank, static_cast<int>(ranks), group ? s.zero_stage : 0};
  std::vector<int> owners;
  std::vector<int64_t> shares;  // parameters owned, per rank
  if (sharding.sharded()) {
    if (trainable.params.size() < static_cast<size_t>(ranks)) {
      throw Error(ErrorKind::InvalidArgument, "train.zero_stage " + std::to_string(s.zero_stage) + ": " +
                                                  std::to_string(trainable.params.size()) + " trainable tensors cannot be shared by " +
                                                  std::to_string(ranks) + " ranks");
    }
    std::vector<size_t> order(trainable.params.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return trainable.params[a].second.numel() > trainable.params[b].second.numel();
    });
    owners.assign(trainable.params.size(), 0);
    shares.assign(static_cast<size_t>(ranks), 0);
    for (size_t i : order) {
      const auto r = static_cast<size_t>(std::min_element(shares.begin(), shares.end()) - shares.begin());
      owners[i] = static_cast<int>(r);
      shares[r] += trainable.params[i].second.numel();
    }
  }
  auto owned = [&](size_t i) { return owners.empty() || owners[i] == world.rank; };

  // What AdamW steps: the owned trained tensors themselves, or (bf16) their fp32 master copies.
  std::vector<bool> keep(trainable.params.size());
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = owned(i);
  std::vector<torch::Tensor> parameters;
  std::vector<std::string> parameter_names;
  for (auto& [n, t] : trainable.params) {
    parameters.push_back(t);
    parameter_names.push_back(n);
  }
  MasterWeights masters(parameters, keep);
  // AdamW with two groups: decay for matrices, none for norms and biases (1-D parameters).
  std::vector<torch::Tensor> decay, no_decay;
  const auto& owned_params = masters.stepped();
  for (const auto& t : owned_params) (t.dim() >= 2 ? decay : no_decay).push_back(t);
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(s.lr).betas({s.beta1, s.beta2}).eps(s.eps).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, options(s.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, options(0.0));
  torch::optim::AdamW optimizer(groups, torch::optim::AdamWOptions(s.lr));
  // The trained tensors at full precision by name (each rank's share under ZeRO, gathered to rank 0 for a
  // checkpoint or the model; ranks other than 0 get an empty list).
  auto exact_tensors = [&]() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (size_t i = 0; i < trainable.params.size(); ++i) {
      const auto& [n, t] = trainable.params[i];
      torch::Tensor v = masters.master_of(i);
      if (sharding.sharded() && masters.copies()) {
        // The owner's copy to every rank, one tensor at a time (rank 0 keeps it on the CPU).
        auto buffer = owned(i) ? v.detach().contiguous() : torch::empty(t.sizes(), t.options().dtype(torch::kFloat32));
        group->broadcast(buffer, owners[i], "gathering the master weight of " + n);
        v = buffer;
      } else if (!v.defined()) {
        v = t;
      }
      if (lead) out.emplace_back(n, v.detach().to(torch::kCPU));
    }
    return out;
  };
  // Fills the trained tensors from a checkpoint's full-precision values, and the model from them.
  auto restore_tensors = [&]() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (size_t i = 0; i < trainable.params.size(); ++i) {
      const auto m = masters.master_of(i);
      out.emplace_back(trainable.params[i].first, m.defined() ? m : trainable.params[i].second);
    }
    return out;
  };

  const auto pool0 = epoch_pool(s, data, 0);
  std::vector<int64_t> lengths(data.examples.size());
  for (size_t i = 0; i < lengths.size(); ++i) lengths[i] = static_cast<int64_t>(data.examples[i].ids.size());
  // The global batch: train.batch_size per rank.
  const int64_t global_batch = s.batch_size * ranks;
  const auto batches_per_epoch =
      static_cast<int64_t>((pool0.size() + static_cast<size_t>(global_batch) - 1) / static_cast<size_t>(global_batch));
  const int64_t steps_per_epoch = std::max<int64_t>(1, batches_per_epoch / s.grad_accum);
  const int64_t total_steps = s.max_steps > 0 ? s.max_steps : steps_per_epoch * s.epochs;

  StageResult result;
  result.model_dir = s.out / "model";
  result.examples = static_cast<int64_t>(data.examples.size());
  result.skipped_rows = data.bad;
  result.fully_masked_rows = data.fully_masked;
  result.truncated_rows = data.truncated;

  TrainState state;
  const auto checkpoints = s.out / "checkpoints";
  if (resume) {
    if (auto latest = latest_checkpoint(checkpoints)) {
      state = load_checkpoint(*latest, restore_tensors(), optimizer, sharding);
      masters.write_back();
      result.resumed = true;
      if (lead && callbacks.notice) callbacks.notice("resuming from " + latest->string() + " (step " + std::to_string(state.step) + ")");
    }
  }
  std::optional<MetricsLog> metrics;
  if (lead) metrics.emplace(s.out / "metrics.jsonl", result.resumed ? state.step : 0);
  std::optional<dist::GradientSync> sync;
  if (group) {
    sync.emplace(*group, parameters, s.bucket_bytes, s.zero_stage >= 2 ? owners : std::vector<int>(), parameter_names);
    sync->broadcast_parameters();
    if (callbacks.notice && lead) {
      // What each rank holds of the trained tensors: the parameters whole (fp32, or bf16), the gradients
      // (their dtype) whole or (ZeRO 2) its own share, the fp32 master copies (bf16) and AdamW's two fp32
      // moments of its own share (ZeRO) or of all; rank 0's share is shown.
      int64_t all_bytes = 0, own_bytes = 0, own_fp32 = 0;
      for (size_t i = 0; i < trainable.params.size(); ++i) {
        const auto& t = trainable.params[i].second;
        const auto b = t.numel() * static_cast<int64_t>(t.element_size());
        all_bytes += b;
        if (owned(i)) {
          own_bytes += b;
          own_fp32 += t.numel() * 4;
        }
      }
      auto mb = [](int64_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MB"; };
      // ZeRO 2: its own gradients, and while they are summed at most kUnownedInFlight buckets of the others'.
      const bool own_gradients = s.zero_stage >= 2 && sharding.sharded();
      const auto in_flight = std::min(all_bytes - own_bytes,
                                      static_cast<int64_t>(dist::GradientSync::kUnownedInFlight) * s.bucket_bytes);
      callbacks.notice("per rank: trained parameters " + mb(all_bytes) + ", gradients " +
                       (own_gradients ? mb(own_bytes) + " (+ up to " + mb(in_flight) + " of other ranks' in flight)"
                                      : mb(all_bytes)) +
                       (masters.copies() ? ", fp32 master weights " + mb(masters.copy_bytes()) : std::string()) +
                       ", optimizer state " + mb(2 * own_fp32));
      if (!shares.empty()) {
        // Whole tensors are owned, so the shares differ by up to the largest tensor.
        const auto [least, most] = std::minmax_element(shares.begin(), shares.end());
        auto millions = [](int64_t n) {
          char b[32];
          std::snprintf(b, sizeof(b), "%.1fM", static_cast<double>(n) / 1e6);
          return std::string(b);
        };
        callbacks.notice("ZeRO: each rank owns whole tensors, " + millions(*least) + " to " + millions(*most) +
                         " parameters per rank (" + millions(shares[0]) + " on rank 0)");
      }
      callbacks.notice("data parallel over " + std::to_string(ranks) + " ranks (" + world.launcher + "), " +
                       (s.device.is_cuda() ? "NCCL, " : "Gloo, ") +
                       std::to_string(sync->buckets()) + " gradient bucket(s); global batch " +
                       std::to_string(global_batch * s.grad_accum) +
                       (sharding.sharded() ? "; ZeRO stage " + std::to_string(s.zero_stage) : std::string()));
    }
  }

  auto& net = pipeline->llm().net;
  auto& model = *net->model;
  const int64_t first_step = state.step;
  const auto started = Clock::now();
  auto interval_start = Clock::now();
  double interval_loss = 0, last_loss = 0, last_norm = 0;
  int64_t interval_steps = 0, interval_tokens = 0;
  std::vector<std::pair<std::string, torch::Tensor>> first_batch;  // for train.dump_gradients
  std::set<size_t> unloadable;  // examples whose media failed to load, each counted once
  int64_t skipped_all = result.skipped_rows;  // over every rank

  for (int64_t epoch = state.epoch; state.step < total_steps; ++epoch) {
    auto pool = epoch_pool(s, data, epoch);
    // Rows whose media failed to load in an earlier epoch (data.skip_bad) are not tried again.
    pool.erase(std::remove_if(pool.begin(), pool.end(), [&](size_t i) { return unloadable.count(i) > 0; }), pool.end());
    std::vector<int64_t> pool_lengths;
    for (size_t i : pool) pool_lengths.push_back(lengths[i]);
    auto batches = data::epoch_batches(pool_lengths, global_batch, s.seed, epoch, s.group_by_length);
    for (auto& b : batches) {
      // This rank's share of the global batch: its slice of batch_size examples (the last may be short or empty).
      const auto from = std::min(b.size(), static_cast<size_t>(world.rank * s.batch_size));
      const auto to = std::min(b.size(), from + static_cast<size_t>(s.batch_size));
      b = std::vector<size_t>(b.begin() + static_cast<std::ptrdiff_t>(from), b.begin() + static_cast<std::ptrdiff_t>(to));
      for (auto& i : b) i = pool[i];
    }
    // Whole optimizer steps only: a trailing partial accumulation is dropped, as the step count assumes.
    const auto usable = static_cast<size_t>((static_cast<int64_t>(batches.size()) / s.grad_accum) * s.grad_accum);
    const size_t first = epoch == state.epoch ? static_cast<size_t>(state.batch) : 0;
    if (first >= usable) {
      state.batch = 0;
      state.epoch = epoch + 1;
      continue;
    }
    data::MediaPrefetcher prefetch(
        *pipeline,
        [&](size_t k) {
          std::vector<data::MediumJob> jobs;
          for (size_t i : batches[k]) {
            const auto& media = data.examples[i].media;
            for (size_t m = 0; m < media.size(); ++m) {
              jobs.push_back({{media[m].modality, media[m].file}, media_seed(s.seed, epoch, i, m)});
            }
          }
          return jobs;
        },
        usable, first, s.workers, s.prefetch);
    for (size_t k = first; k < usable && state.step < total_steps;) {
      for (auto& param : parameters) param.mutable_grad() = torch::Tensor();
      double step_loss = 0;
      int64_t step_tokens = 0;
      for (int64_t micro = 0; micro < s.grad_accum; ++micro, ++k) {
        auto loaded = prefetch.take(k);
        // Drop examples whose media failed to load (counted) unless that is an error.
        std::vector<size_t> keep;
        std::vector<std::vector<size_t>> media_of;
        size_t at = 0;
        for (size_t i : batches[k]) {
          const auto n = data.examples[i].media.size();
          bool ok = true;
          for (size_t m = at; m < at + n; ++m) {
            if (!loaded.errors[m]) continue;
            try {
              std::rethrow_exception(loaded.errors[m]);
            } catch (const std::exception& e) {
              const auto why = data.rows[i].where() + ": " + e.what();
              if (!s.skip_bad) throw Error(ErrorKind::Format, why);
              if (cb.notice) cb.notice("skipped " + why);
            }
            ok = false;
          }
          if (!ok && unloadable.insert(i).second) ++result.skipped_rows;
          if (ok) {
            keep.push_back(i);
            std::vector<size_t> idx(n);
            std::iota(idx.begin(), idx.end(), at);
            media_of.push_back(idx);
          }
          at += n;
        }
        const bool last_micro = micro + 1 == s.grad_accum;
        if (sync) sync->begin_backward(last_micro);
        if (keep.empty() && !group) continue;
        // A rank whose share is empty (the epoch's last batch, or rows skipped) still takes part in the
        // collectives, with nothing of its own to add. Over several ranks the loss is the mean over the
        // global batch's target tokens, as one process with the whole batch computes it: each rank weighs
        // its own mean by its share of the targets. Their count is summed while the forward pass runs.
        int64_t targets = 0;
        for (size_t i : keep) {
          const auto& l = data.examples[i].labels;
          targets += std::count_if(l.begin() + std::min<std::ptrdiff_t>(1, static_cast<std::ptrdiff_t>(l.size())), l.end(),
                                   [](int64_t v) { return v != data::kIgnoreLabel; });
        }
        torch::Tensor stats;
        dist::Group::Pending counting;
        if (group) {
          stats = torch::tensor({static_cast<double>(targets), static_cast<double>(result.skipped_rows - data.bad)},
                                torch::kFloat64);
          counting = group->all_reduce_sum_async(stats, "summing the batch's target tokens");
        }
        torch::Tensor loss;
        double value = 0;
        int64_t tokens = 0;
        // These outlive the backward pass: activation checkpointing recomputes the layers with them.
        llm::AttentionContext ctx;
        std::optional<llm::LayerInputs> inputs;
        if (!keep.empty()) {
          std::vector<EncodedMedia> media;
          std::vector<std::vector<size_t>> where(keep.size());
          for (size_t r = 0; r < keep.size(); ++r) {
            for (size_t m : media_of[r]) {
              where[r].push_back(media.size());
              media.push_back(std::move(loaded.media[m]));
            }
          }
          AutocastScope autocast(s.precision == StageSettings::Precision::Bf16Autocast, s.device);
          pipeline->encode_loaded(media);
          std::vector<std::vector<int64_t>> ids;
          std::vector<std::vector<const EncodedMedia*>> ptrs;
          int64_t longest = 0;
          for (size_t r = 0; r < keep.size(); ++r) {
            ids.push_back(data.examples[keep[r]].ids);
            longest = std::max<int64_t>(longest, static_cast<int64_t>(ids.back().size()));
            ptrs.emplace_back();
            for (size_t m : where[r]) ptrs.back().push_back(&media[m]);
          }
          auto spliced = pipeline->splice_ids(ids, ptrs, Padding::Right, s.detach_text);
          const auto batch = static_cast<int64_t>(keep.size());
          auto labels = torch::full({batch, longest}, data::kIgnoreLabel, torch::kInt64);
          for (size_t r = 0; r < keep.size(); ++r) {
            const auto& l = data.examples[keep[r]].labels;
            labels[static_cast<int64_t>(r)].narrow(0, 0, static_cast<int64_t>(l.size())).copy_(torch::tensor(l, torch::kInt64));
          }
          labels = labels.to(s.device);
          ctx.positions = torch::arange(longest, torch::TensorOptions().dtype(torch::kInt64).device(s.device))
                              .unsqueeze(0)
                              .expand({batch, longest});
          // Right padding: a real token's causal window holds only real tokens, so the plain causal pattern
          // is exact wherever a label is, and SDPA may pick its flash kernel (no [B, 1, T, T] mask).
          torch::Tensor hidden;
          // Under bf16 autocast the rotary tables are bf16 too: q and k leave their (autocast) products in
          // bf16, and rotating them against fp32 tables would promote both to fp32 before attention casts
          // them back. This is also what training in bf16 outright (DeepSpeed's bf16 mode) computes.
          const auto table_dtype = s.precision == StageSettings::Precision::Bf16Autocast ? torch::kBFloat16
                                                                                          : spliced.embeds.scalar_type();
          inputs.emplace(model.prepare(ctx, longest, table_dtype));
          if (s.activation_checkpointing) {
            hidden = model.forward_checkpointed(spliced.embeds, ctx, *inputs);
          } else {
            hidden = model.forward(spliced.embeds, ctx);
          }
          auto logits = net->logits(hidden);
          const auto vocab = logits.size(-1);
          loss = torch::nn::functional::cross_entropy(
              logits.narrow(1, 0, longest - 1).reshape({-1, vocab}).to(torch::kFloat32),
              labels.narrow(1, 1, longest - 1).reshape({-1}),
              torch::nn::functional::CrossEntropyFuncOptions().ignore_index(data::kIgnoreLabel));
          value = loss.item<double>();
          tokens = spliced.valid.sum().item<int64_t>();
          if (state.step == 0 && micro == 0 && !s.dump_gradients.empty()) {
            first_batch = {{"batch.ids", spliced.padded_ids.to(torch::kCPU).contiguous()},
                           {"batch.labels", labels.to(torch::kCPU).contiguous()},
                           {"batch.valid", spliced.valid.to(torch::kCPU).contiguous()}};
          }
        }
        double global_targets = static_cast<double>(targets);
        if (group) {
          counting.wait();
          global_targets = stats[0].item<double>();
          skipped_all = data.bad + static_cast<int64_t>(stats[1].item<double>());
        }
        if (!std::isfinite(value)) {
          // Over several ranks the others then stop at their next collective ("another rank exited").
          throw Error(ErrorKind::InvalidArgument, (group ? "rank " + std::to_string(world.rank) + " of " +
                                                               std::to_string(ranks) + ": " : std::string()) +
                                                      "the loss is " + std::to_string(value) + " at step " +
                                                      std::to_string(state.step + 1) + " (lower optim.lr?)");
        }
        // This rank's part of the step's loss; the ranks' parts add up to the global batch's loss.
        double share = value;
        if (loss.defined() && group) {
          share = value * static_cast<double>(targets) / global_targets;
          auto weighted = loss * (static_cast<double>(targets) / global_targets / static_cast<double>(s.grad_accum));
          // What this batch does not reach (an encoder whose media it lacks) is done before backward starts.
          if (sync) sync->prepare_backward(weighted);
          weighted.backward();
        } else if (loss.defined()) {
          (loss / static_cast<double>(s.grad_accum)).backward();
        }
        step_loss += share / static_cast<double>(s.grad_accum);
        step_tokens += tokens;
      }
      if (sync) sync->end_backward();
      // Over several ranks, the step's loss and tokens are added up where they are reported.
      auto sum_over_ranks = [&](std::vector<double> values, const std::string& what) {
        if (!group) return values;
        auto t = torch::tensor(values, torch::kFloat64);
        group->all_reduce_sum(t, what);
        return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
      };
      const double first_loss = state.step == 0 && !s.dump_gradients.empty()
                                    ? sum_over_ranks({step_loss}, "summing the first step's loss")[0]
                                    : step_loss;
      if (state.step == 0 && !s.dump_gradients.empty() && lead) {
        std::vector<std::pair<std::string, torch::Tensor>> grads{{"loss", torch::tensor(first_loss, torch::kFloat64)}};
        grads.insert(grads.end(), first_batch.begin(), first_batch.end());
        for (const auto& [n, t] : trainable.params) {
          if (t.grad().defined()) grads.emplace_back("grad." + n, t.grad().detach().to(torch::kCPU).contiguous());
        }
        weights::write_safetensors(s.dump_gradients, grads);
      }
      // bf16: the gradients into fp32 beside the master copies, which clipping and AdamW work on.
      masters.take_gradients();
      const double factor = schedule_factor(s, state.step, total_steps);
      for (auto& g : optimizer.param_groups()) g.options().set_lr(s.lr * factor);
      double norm = 0;
      if (s.max_grad_norm > 0 && sharding.sharded()) {
        // Each rank steps its own tensors only (and under ZeRO 2 holds only their gradients): the squared
        // norms of its own are summed over the ranks. One read of the device for all of them.
        std::vector<torch::Tensor> norms;
        for (const auto& p : owned_params) {
          if (p.grad().defined()) norms.push_back(p.grad().norm().to(torch::kFloat64));
        }
        auto total = norms.empty() ? torch::zeros({1}, torch::kFloat64)
                                   : torch::stack(norms).pow(2).sum().reshape({1}).to(torch::kCPU);
        group->all_reduce_sum(total, "summing the gradient norm");
        norm = std::sqrt(total.item<double>());
        const double coef = s.max_grad_norm / (norm + 1e-6);
        if (coef < 1) {
          for (const auto& p : owned_params) {
            if (p.grad().defined()) p.mutable_grad().mul_(coef);
          }
        }
      } else if (s.max_grad_norm > 0) {
        norm = torch::nn::utils::clip_grad_norm_(owned_params, s.max_grad_norm);
      }
      optimizer.step();
      masters.write_back();
      if (sharding.sharded()) sync->broadcast_from_owners(owners);
      ++state.step;
      state.epoch = epoch;
      state.batch = static_cast<int64_t>(k);
      last_loss = step_loss;
      last_norm = norm;
      interval_loss += step_loss;
      interval_tokens += step_tokens;
      ++interval_steps;
      if (state.step % s.log_every == 0 || state.step == total_steps) {
        if (group) {
          const auto sums = sum_over_ranks({interval_loss, static_cast<double>(interval_tokens), last_loss},
                                           "summing the logged losses and tokens");
          interval_loss = sums[0];
          interval_tokens = static_cast<int64_t>(sums[1]);
          last_loss = sums[2];
        }
        Progress pr;
        pr.stage = s.name;
        pr.step = state.step;
        pr.total_steps = total_steps;
        pr.epoch = epoch;
        pr.loss = interval_loss / static_cast<double>(interval_steps);
        pr.lr = s.lr * factor;
        pr.grad_norm = last_norm;
        pr.tokens_per_s = static_cast<double>(interval_tokens) / std::max(1e-9, seconds_since(interval_start));
        pr.elapsed_s = seconds_since(started);
        // From this run's pace: a resumed run's earlier steps took no time here.
        pr.eta_s = pr.elapsed_s / static_cast<double>(std::max<int64_t>(1, state.step - first_step)) *
                   static_cast<double>(total_steps - state.step);
        pr.skipped_rows = group ? skipped_all : result.skipped_rows;
        if (metrics) metrics->write(pr);
        if (cb.progress) cb.progress(pr);
        interval_loss = 0;
        interval_steps = 0;
        interval_tokens = 0;
        interval_start = Clock::now();
      }
      if ((s.save_every > 0 && state.step % s.save_every == 0) || state.step == total_steps) {
        std::vector<std::filesystem::path> shards;
        if (sharding.sharded()) {
          // Every rank writes its part of the optimizer state; rank 0 then moves them into the checkpoint.
          auto shard = [&](int r) {
            return checkpoints / (".shard-" + std::to_string(state.step) + "-rank-" + std::to_string(r) + ".pt");
          };
          std::filesystem::create_directories(checkpoints);
          const auto mine = shard(world.rank);
          auto partial = mine;
          partial += ".partial";
          torch::save(optimizer, partial.string());
          std::filesystem::rename(partial, mine);
          group->barrier("writing the optimizer shards of step " + std::to_string(state.step));
          for (int r = 0; r < ranks; ++r) shards.push_back(shard(r));
        }
        const auto exact = exact_tensors();
        if (lead) save_checkpoint(checkpoints, state, exact, optimizer, s.keep_checkpoints, sharding, shards);
      }
    }
    if (state.step < total_steps) {
      state.epoch = epoch + 1;
      state.batch = 0;
    }
  }
  result.steps = state.step;
  result.final_loss = last_loss;
  for (const auto& name : pipeline->media_order()) {
    pipeline->modality(name).train(false);
    pipeline->modality(name).set_encoder_trainable(false);
  }
  const auto exact = exact_tensors();
  if (lead) write_model_dir(*pipeline, result.model_dir, s.name, exact);
  // Every rank returns once the model is written.
  if (group) group->barrier("waiting for rank 0 to write the model");
  if (group) result.skipped_rows = skipped_all;
  return result;
}

std::filesystem::path consolidate(const config::Config& config, std::shared_ptr<const host::PluginHost> host,
                                  const std::filesystem::path& checkpoint, const std::filesystem::path& out) {
  const auto s = read_stage_settings(config);
  auto chosen = checkpoint;
  if (chosen.empty()) {
    const auto latest = latest_checkpoint(s.out / "checkpoints");
    if (!latest) throw Error(ErrorKind::NotFound, (s.out / "checkpoints").string() + ": no complete checkpoint");
    chosen = *latest;
  }
  if (!std::filesystem::is_regular_file(chosen / "state.json") ||
      !std::filesystem::is_regular_file(chosen / "trainable.safetensors")) {
    throw Error(ErrorKind::NotFound, chosen.string() + ": not a complete checkpoint (state.json and trainable.safetensors)");
  }
  LoadOptions load;
  load.overrides = s.model_overrides;
  load.dtype = model_dtype(s);  // the model the stage writes: its frozen tensors as the run held them
  auto pipeline = Pipeline::load(s.model_dir, load, host);
  auto trainable = select_trainable(s, *pipeline);
  // The checkpoint's values at their full precision: into the model where it holds fp32, else beside it.
  std::vector<std::pair<std::string, torch::Tensor>> targets, exact;
  for (const auto& [n, t] : trainable.params) {
    if (t.scalar_type() == torch::kFloat32) {
      targets.emplace_back(n, t);
    } else {
      exact.emplace_back(n, torch::empty(t.sizes(), torch::kFloat32));
      targets.push_back(exact.back());
    }
  }
  load_checkpoint_parameters(chosen, targets);
  for (const auto& name : pipeline->media_order()) {
    pipeline->modality(name).train(false);
    pipeline->modality(name).set_encoder_trainable(false);
  }
  write_model_dir(*pipeline, out, s.name, exact);
  return chosen;
}

std::vector<SourceReport> check_data(const config::Config& config, std::shared_ptr<const host::PluginHost> host,
                                     bool load_media) {
  const auto s = read_stage_settings(config);
  LoadOptions load;
  load.overrides = s.model_overrides;
  auto pipeline = Pipeline::load(s.model_dir, load, host);
  check_folders(s, *pipeline, config);
  data::ExampleBuilder builder(*pipeline, s.examples);
  std::vector<SourceReport> reports;
  constexpr size_t kErrorsShown = 5;
  auto check = [&](const WeightedSource& src, bool previous) {
    SourceReport r;
    r.file = src.file.string();
    r.previous = previous;
    auto note = [&](const std::string& line) {
      if (r.errors.size() < kErrorsShown) r.errors.push_back(line);
    };
    auto rows = data::read_rows(src.file, roots_for(s, *pipeline, src.file), [&](const data::Row& row, const std::string& why) {
      ++r.rows;
      ++r.bad_rows;
      note(row.where() + ": " + why);
    });
    int64_t total_tokens = 0, counted = 0;
    for (const auto& row : rows) {
      ++r.rows;
      bool bad = false;
      for (size_t m = 0; m < row.media.size(); ++m) {
        const auto& medium = row.media[m];
        ++r.media;
        std::error_code ec;
        if (!std::filesystem::is_regular_file(medium.file, ec)) {
          ++r.media_missing;
          note(row.where() + ": " + medium.modality + " file not found: " + medium.file.string());
          bad = true;
          continue;
        }
        if (load_media) {
          try {
            pipeline->load_medium({medium.modality, medium.file}, m);
          } catch (const std::exception& e) {
            ++r.media_unreadable;
            note(row.where() + ": " + e.what());
            bad = true;
          }
        }
      }
      try {
        const auto ex = builder.build(row);
        if (ex.truncated) ++r.truncated;
        if (ex.targets == 0) {
          ++r.fully_masked;
          note(row.where() + ": every label is masked");
        }
        const auto n = static_cast<int64_t>(ex.ids.size());
        r.tokens_min = counted == 0 ? n : std::min(r.tokens_min, n);
        r.tokens_max = std::max(r.tokens_max, n);
        total_tokens += n;
        ++counted;
      } catch (const Error& e) {
        note(e.what());
        bad = true;
      }
      if (bad) ++r.bad_rows;
    }
    r.tokens_mean = counted > 0 ? static_cast<double>(total_tokens) / static_cast<double>(counted) : 0;
    reports.push_back(std::move(r));
  };
  for (const auto& src : s.train) check(src, false);
  for (const auto& src : s.previous) check(src, true);
  return reports;
}

}  // namespace lego::train
