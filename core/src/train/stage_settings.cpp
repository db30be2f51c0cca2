#include "stage_settings.h"

#include <fstream>
#include <set>

#include "lego/model/language_model.h"
#include "lego/sdk/error.h"

namespace lego::train {
namespace {

const std::set<std::string> kStageSections = {"model", "data", "train", "optim", "stage"};
const std::set<std::string> kTags = {"encoder", "adapter", "llm", "new_tokens"};

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return {};
  return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

}  // namespace

int line_of_key(const std::filesystem::path& file, const std::string& key) {
  const auto dot = key.find('.');
  if (dot == std::string::npos || file.empty()) return 0;
  const auto section = key.substr(0, dot), name = key.substr(dot + 1);
  std::ifstream in(file);
  std::string line, current;
  for (int number = 1; std::getline(in, line); ++number) {
    const auto t = trim(line);
    if (t.size() > 2 && t.front() == '[' && t.back() == ']') {
      current = trim(t.substr(1, t.size() - 2));
    } else if (current == section && t.rfind(name, 0) == 0 && trim(t.substr(name.size())).rfind('=', 0) == 0) {
      return number;
    }
  }
  return 0;
}

StageSettings read_stage_settings(const config::Config& c) {
  const auto base = c.source().empty() ? std::filesystem::path(".") : c.source().parent_path();
  auto path = [&](const std::string& key) {
    std::filesystem::path p(c.get_string(key));
    return p.is_absolute() ? p : base / p;
  };
  auto sources = [&](const std::string& key) {
    std::vector<WeightedSource> out;
    for (const auto& item : c.get_list(key)) {
      WeightedSource s;
      std::string file = item;
      // "file.json:2.5" gives a weight; a colon inside a path without a number after it is left alone.
      if (const auto colon = item.rfind(':'); colon != std::string::npos) {
        try {
          size_t used = 0;
          const double w = std::stod(item.substr(colon + 1), &used);
          if (used == item.size() - colon - 1) {
            if (!(w > 0) || !std::isfinite(w)) {
              throw Error(ErrorKind::Format, c.source().string() + ": " + key + ": the weight of '" + item +
                                                 "' must be a positive number");
            }
            s.weight = w;
            file = item.substr(0, colon);
          }
        } catch (const std::invalid_argument&) {
        } catch (const std::out_of_range&) {
        }
      }
      std::filesystem::path p(file);
      s.file = p.is_absolute() ? p : base / p;
      out.push_back(s);
    }
    return out;
  };
  StageSettings s;
  s.name = c.get_string("stage.name", "stage");
  s.model_dir = path("model.dir");
  s.device = parse_device(c.get_string("model.device", "cpu"));
  s.train = sources("data.train");
  if (s.train.empty()) throw Error(ErrorKind::Format, c.source().string() + ": data.train names no data file");
  s.previous = sources("data.previous");
  s.previous_rate = c.get_double("data.previous_rate", 0, 0, 0.95);
  if (s.previous_rate > 0 && s.previous.empty()) {
    throw Error(ErrorKind::Format, c.source().string() + ": data.previous_rate is set but data.previous names no file");
  }
  for (const auto& key : c.section_keys("data")) {
    const std::string suffix = "_folder";
    if (key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
      s.folders[key.substr(0, key.size() - suffix.size())] = path("data." + key);
    }
  }
  s.examples.masking = data::parse_masking(c.get_string("data.masking", "released"));
  s.examples.max_length = c.get_int("data.max_length", 2048, 8, 1 << 20);
  s.examples.media_first = c.get_bool("data.media_first", true);
  s.skip_bad = c.get_bool("data.skip_bad", false);
  s.group_by_length = c.get_bool("data.group_by_length", true);
  s.workers = static_cast<int>(c.get_int("data.workers", 2, 1, 64));
  s.prefetch = static_cast<int>(c.get_int("data.prefetch", 2, 1, 64));

  s.out = path("train.out");
  s.epochs = c.get_int("train.epochs", 1, 1, 1000000);
  s.max_steps = c.get_int("train.max_steps", 0, 0, int64_t{1} << 40);
  s.batch_size = c.get_int("train.batch_size", 1, 1, 1 << 20);
  s.grad_accum = c.get_int("train.grad_accum", 1, 1, 1 << 20);
  s.seed = static_cast<uint64_t>(c.get_int("train.seed", 42, 0, int64_t{1} << 62));
  s.save_every = c.get_int("train.save_every", 500, 0, int64_t{1} << 40);
  s.keep_checkpoints = c.get_int("train.keep_checkpoints", 2, 1, 1000);
  s.log_every = c.get_int("train.log_every", 10, 1, int64_t{1} << 40);
  s.activation_checkpointing = c.get_bool("train.activation_checkpointing", false);
  s.bucket_bytes = c.get_int("train.bucket_mb", 25, 1, 4096) << 20;
  s.dist_timeout_s = c.get_int("train.dist_timeout_s", 1800, 1, 7 * 24 * 3600);
  s.zero_stage = static_cast<int>(c.get_int("train.zero_stage", 0, 0, 2));
  const auto precision = c.get_string("train.precision", "fp32");
  if (precision == "fp32") {
    s.precision = StageSettings::Precision::Fp32;
  } else if (precision == "bf16") {
    s.precision = StageSettings::Precision::Bf16;
  } else if (precision == "bf16-autocast") {
    s.precision = StageSettings::Precision::Bf16Autocast;
  } else {
    throw Error(ErrorKind::Format, c.source().string() + ": train.precision is '" + precision +
                                       "' (fp32, bf16 or bf16-autocast)");
  }
  if (s.precision == StageSettings::Precision::Bf16Autocast && !s.device.is_cuda()) {
    throw Error(ErrorKind::Unsupported, c.source().string() + ": train.precision = bf16-autocast runs on CUDA only (model.device is " +
                                            s.device.str() + "); bf16 runs on any device");
  }
  if (c.has("train.dump_gradients")) s.dump_gradients = path("train.dump_gradients");

  s.lr = c.get_double("optim.lr", 2e-5, 0, 10);
  s.weight_decay = c.get_double("optim.weight_decay", 0, 0, 10);
  s.beta1 = c.get_double("optim.beta1", 0.9, 0, 0.999999);
  s.beta2 = c.get_double("optim.beta2", 0.999, 0, 0.999999999);
  s.eps = c.get_double("optim.eps", 1e-8, 1e-30, 1);
  s.warmup_ratio = c.get_double("optim.warmup_ratio", 0.03, 0, 1);
  s.schedule = c.get_string("optim.schedule", "cosine");
  if (s.schedule != "cosine" && s.schedule != "linear" && s.schedule != "constant") {
    throw Error(ErrorKind::Format, c.source().string() + ": optim.schedule is '" + s.schedule +
                                       "' (cosine, linear or constant)");
  }
  s.max_grad_norm = c.get_double("optim.max_grad_norm", 1.0, 0, 1e9);

  s.tags = c.get_list("stage.train");
  if (s.tags.empty()) throw Error(ErrorKind::Format, c.source().string() + ": stage.train names nothing to train");
  for (const auto& t : s.tags) {
    if (!kTags.count(t)) {
      throw Error(ErrorKind::Format, c.source().string() + ": stage.train: unknown tag '" + t +
                                         "' (encoder, adapter, llm, new_tokens)");
    }
  }
  const bool llm = std::find(s.tags.begin(), s.tags.end(), "llm") != s.tags.end();
  const bool new_tokens = std::find(s.tags.begin(), s.tags.end(), "new_tokens") != s.tags.end();
  s.detach_text = c.get_bool("stage.detach_text", new_tokens && !llm);

  // Every other section sets keys of the model's modality sections for this stage.
  for (const auto& section : c.sections()) {
    if (kStageSections.count(section)) continue;
    for (const auto& key : c.section_keys(section)) s.model_overrides[section + "." + key] = c.get_string(section + "." + key);
  }
  if (const auto unknown = c.unread_keys({"model", "data", "train", "optim", "stage"}); !unknown.empty()) {
    const int line = line_of_key(c.source(), unknown.front());
    throw Error(ErrorKind::Format, c.source().string() + (line > 0 ? ":" + std::to_string(line) : "") +
                                       ": unknown key '" + unknown.front() + "'");
  }
  return s;
}

}  // namespace lego::train
