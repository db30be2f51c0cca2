#include "checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <mutex>
#include <sstream>

#include "lego/fs/atomic_file.h"
#include "lego/sdk/error.h"
#include "lego/weights/tensor_source.h"

namespace lego::train {
namespace {

constexpr const char* kPrefix = "step-";
constexpr const char* kRngTensor = "cpu_generator";

std::optional<int64_t> step_of(const std::filesystem::path& dir) {
  const auto name = dir.filename().string();
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  const auto digits = name.substr(std::string(kPrefix).size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 12) {
    return std::nullopt;
  }
  return std::stoll(digits);
}

std::vector<std::pair<int64_t, std::filesystem::path>> complete_checkpoints(const std::filesystem::path& dir) {
  std::vector<std::pair<int64_t, std::filesystem::path>> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    auto step = step_of(e.path());
    if (step && std::filesystem::is_regular_file(e.path() / "state.json")) out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& dir) {
  const auto all = complete_checkpoints(dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

void save_checkpoint(const std::filesystem::path& dir, const TrainState& state,
                     const std::vector<std::pair<std::string, torch::Tensor>>& params, torch::optim::Optimizer& optimizer,
                     int64_t keep, const Sharding& sharding, const std::vector<std::filesystem::path>& shards) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kPrefix, static_cast<long long>(state.step));
  std::filesystem::create_directories(dir);
  {
    fs::StagedDirectory staged(dir / name);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [n, t] : params) tensors.emplace_back(n, t.detach().to(torch::kCPU).contiguous());
    weights::write_safetensors(staged.path() / "trainable.safetensors", tensors, {{"producer", "lego train"}});
    if (sharding.sharded()) {
      if (shards.size() != static_cast<size_t>(sharding.ranks)) {
        throw Error(ErrorKind::InvalidArgument, "checkpoint: " + std::to_string(shards.size()) + " optimizer shards for " +
                                                    std::to_string(sharding.ranks) + " ranks");
      }
      for (size_t r = 0; r < shards.size(); ++r) {
        std::filesystem::rename(shards[r], staged.path() / ("optimizer-rank-" + std::to_string(r) + ".pt"));
      }
    } else {
      torch::save(optimizer, (staged.path() / "optimizer.pt").string());
    }
    auto generator = at::detail::getDefaultCPUGenerator();
    torch::Tensor rng;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      rng = generator.get_state();
    }
    weights::write_safetensors(staged.path() / "rng.safetensors", {{kRngTensor, rng}});
    nlohmann::json j = {{"step", state.step}, {"epoch", state.epoch}, {"batch", state.batch}};
    if (sharding.sharded()) {
      j["ranks"] = sharding.ranks;
      j["zero_stage"] = sharding.zero_stage;
    }
    fs::write_file_atomically(staged.path() / "state.json", j.dump(2) + "\n");
    staged.commit();
  }
  auto all = complete_checkpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) std::filesystem::remove_all(all[i].second);
  // Staging folders of runs that were killed while writing (hidden, ".step-...").
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto n = e.path().filename().string();
    // And optimizer shards of a save that a kill interrupted (".shard-...").
    if ((n.rfind(std::string(".") + kPrefix, 0) == 0 && n.find(".staging.") != std::string::npos) ||
        n.rfind(".shard-", 0) == 0) {
      std::error_code ec;
      std::filesystem::remove_all(e.path(), ec);
    }
  }
}

void load_checkpoint_parameters(const std::filesystem::path& checkpoint,
                                const std::vector<std::pair<std::string, torch::Tensor>>& params) {
  const auto where = checkpoint.string();
  auto source = weights::open_tensor_source(checkpoint / "trainable.safetensors");
  {
    torch::NoGradGuard no_grad;
    for (const auto& [n, t] : params) {
      if (!source->contains(n)) throw Error(ErrorKind::Format, where + ": the checkpoint has no tensor '" + n + "'");
      auto v = source->get(n);
      if (v.sizes() != t.sizes()) {
        throw Error(ErrorKind::Format, where + ": tensor '" + n + "' has shape " + shape_string(v.sizes()) +
                                           ", the model's is " + shape_string(t.sizes()));
      }
      t.copy_(v);
    }
  }
}

TrainState load_checkpoint(const std::filesystem::path& checkpoint,
                           const std::vector<std::pair<std::string, torch::Tensor>>& params,
                           torch::optim::Optimizer& optimizer, const Sharding& sharding) {
  const auto where = checkpoint.string();
  // How the checkpoint's optimizer state was kept must be how this run keeps it.
  {
    std::ifstream in(checkpoint / "state.json");
    nlohmann::json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      throw Error(ErrorKind::Format, where + "/state.json: " + e.what());
    }
    const int ranks = j.value("ranks", 1), zero = j.value("zero_stage", 0);
    const bool was_sharded = zero > 0 && ranks > 1;
    if (was_sharded != sharding.sharded() || (was_sharded && (ranks != sharding.ranks || zero != sharding.zero_stage))) {
      auto how = [](bool sharded, int n, int z) {
        return sharded ? "sharded over " + std::to_string(n) + " ranks (train.zero_stage " + std::to_string(z) + ")"
                       : std::string("whole (train.zero_stage 0, or one rank)");
      };
      throw Error(ErrorKind::Format, where + ": its optimizer state is " + how(was_sharded, ranks, zero) +
                                         ", this run's is " + how(sharding.sharded(), sharding.ranks, sharding.zero_stage) +
                                         ": resume it as it was run, or make a model of it (lego consolidate) and start a new stage");
    }
  }
  load_checkpoint_parameters(checkpoint, params);
  const auto file = sharding.sharded() ? "optimizer-rank-" + std::to_string(sharding.rank) + ".pt" : std::string("optimizer.pt");
  try {
    torch::load(optimizer, (checkpoint / file).string());
  } catch (const c10::Error& e) {
    throw Error(ErrorKind::Format, where + "/" + file + ": " + e.what_without_backtrace());
  }
  auto rng = weights::open_tensor_source(checkpoint / "rng.safetensors");
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng->get(kRngTensor).clone());
  }
  std::ifstream in(checkpoint / "state.json");
  nlohmann::json j;
  try {
    in >> j;
    TrainState s;
    s.step = j.at("step").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.batch = j.at("batch").get<int64_t>();
    if (s.step < 0 || s.epoch < 0 || s.batch < 0) throw Error(ErrorKind::Format, "negative position");
    return s;
  } catch (const std::exception& e) {
    throw Error(ErrorKind::Format, where + "/state.json: " + e.what());
  }
}

MetricsLog::MetricsLog(const std::filesystem::path& file, int64_t keep_until_step) {
  std::string kept;
  if (keep_until_step > 0) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int64_t>() <= keep_until_step) kept += line + "\n";
      } catch (const std::exception&) {
        // a line cut by a kill: dropped
      }
    }
  }
  fs::write_file_atomically(file, kept);
  out_.open(file, std::ios::app);
  if (!out_) throw Error(ErrorKind::Io, file.string() + ": cannot open the metrics log");
}

void MetricsLog::write(const Progress& p) {
  nlohmann::json j = {{"stage", p.stage}, {"step", p.step},       {"total_steps", p.total_steps},
                      {"epoch", p.epoch}, {"loss", p.loss},       {"lr", p.lr},
                      {"grad_norm", p.grad_norm}, {"tokens_per_s", p.tokens_per_s}, {"elapsed_s", p.elapsed_s},
                      {"skipped_rows", p.skipped_rows}};
  out_ << j.dump() << "\n";
  out_.flush();
}

}  // namespace lego::train
