// lego train: one training stage from a config; lego data check: the same config's data, validated.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "lego/config/config.h"
#include "lego/host/plugin_host.h"
#include "lego/sdk/error.h"
#include "lego/train/trainer.h"
#include "loss_plot.h"
#include "multimodal_flags.h"

namespace lego::cli {
namespace po = boost::program_options;
namespace {

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<long long>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", t / 3600, (t / 60) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", t / 60, t % 60);
  }
  return buf;
}

config::Config read_config(const std::string& file, const std::vector<std::string>& sets) {
  auto c = config::read_file(file);
  for (const auto& s : sets) c.set(s);
  return c;
}

}  // namespace

int run_train(const Args& args) {
  std::string config_file;
  std::vector<std::string> sets, plugin_dirs;
  bool resume = false;
  RuntimeFlags runtime;
  po::options_description d("train");
  d.add_options()
      ("config", po::value(&config_file)->required(), "the stage's INI file (docs/training.md)")
      ("set", po::value(&sets)->composing(), "override one key: section.key=value (repeatable)")
      ("resume", po::bool_switch(&resume), "continue from the newest complete checkpoint under train.out")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  d.add(runtime_flags(runtime));
  if (!parse_args(args, d, "lego train --config FILE [--set section.key=value ...] [--resume]")) return 0;
  apply_runtime_flags(runtime);
  const auto config = read_config(config_file, sets);
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  train::Callbacks callbacks;
  callbacks.notice = [tty](const std::string& line) {
    if (tty) std::cerr << "\r\033[K";
    std::cerr << "lego train: " << line << "\n";
  };
  callbacks.progress = [tty](const train::Progress& p) {
    char line[256];
    if (tty) {
      constexpr int kWidth = 24;
      const int filled = p.total_steps > 0 ? static_cast<int>(kWidth * p.step / p.total_steps) : 0;
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(kWidth, '.');
      std::snprintf(line, sizeof(line), "\r\033[K%s [%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s eta %s",
                    p.stage.c_str(), bar.c_str(), static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                    p.loss, p.lr, p.tokens_per_s, duration(p.eta_s).c_str());
      std::cerr << line << std::flush;
      if (p.step == p.total_steps) std::cerr << "\n";
    } else {
      std::snprintf(line, sizeof(line), "%s step %lld/%lld epoch %lld loss %.4f lr %.3e grad_norm %.3f %.0f tok/s elapsed %s eta %s\n",
                    p.stage.c_str(), static_cast<long long>(p.step), static_cast<long long>(p.total_steps),
                    static_cast<long long>(p.epoch), p.loss, p.lr, p.grad_norm, p.tokens_per_s,
                    duration(p.elapsed_s).c_str(), duration(p.eta_s).c_str());
      std::cerr << line << std::flush;
    }
  };
  const auto result = train::run_stage(config, host_for(args), resume, callbacks);
  const auto out = result.model_dir.parent_path();
  write_loss_plot(out / "metrics.jsonl", out / "loss.png");
  std::cout << "trained " << result.steps << " steps on " << result.examples << " examples (final loss "
            << result.final_loss << "; skipped rows " << result.skipped_rows << ", fully masked "
            << result.fully_masked_rows << ", truncated " << result.truncated_rows << ")\n"
            << "model: " << result.model_dir.string() << "\nloss curve: " << (out / "loss.png").string() << "\n";
  return 0;
}

int run_data(const Args& args) {
  if (args.empty() || args.front() != "check") {
    throw Error(ErrorKind::InvalidArgument, "lego data: the subcommand is 'check' (lego data check --config FILE)");
  }
  const Args rest(args.begin() + 1, args.end());
  std::string config_file;
  std::vector<std::string> sets, plugin_dirs;
  bool no_load = false, json = false;
  po::options_description d("data check");
  d.add_options()
      ("config", po::value(&config_file)->required(), "the stage's INI file whose data to check")
      ("set", po::value(&sets)->composing(), "override one key: section.key=value (repeatable)")
      ("no-load", po::bool_switch(&no_load), "check that media exist, without decoding them")
      ("json", po::bool_switch(&json), "print the report as JSON")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  if (!parse_args(rest, d, "lego data check --config FILE [--set section.key=value ...] [--no-load] [--json]")) return 0;
  const auto reports = train::check_data(read_config(config_file, sets), host_for(rest), !no_load);
  int64_t bad = 0;
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : reports) {
    bad += r.bad_rows;
    j.push_back({{"file", r.file}, {"previous", r.previous}, {"rows", r.rows}, {"bad_rows", r.bad_rows},
                 {"media", r.media}, {"media_missing", r.media_missing}, {"media_unreadable", r.media_unreadable},
                 {"truncated", r.truncated}, {"fully_masked", r.fully_masked}, {"tokens_min", r.tokens_min},
                 {"tokens_mean", r.tokens_mean}, {"tokens_max", r.tokens_max}, {"errors", r.errors}});
  }
  if (json) {
    std::cout << j.dump(2) << "\n";
  } else {
    for (const auto& r : reports) {
      std::printf("%s%s: %lld rows, %lld bad; %lld media (%lld missing, %lld unreadable); tokens %lld/%.1f/%lld "
                  "(min/mean/max); %lld truncated, %lld fully masked\n",
                  r.file.c_str(), r.previous ? " (previous stage)" : "", static_cast<long long>(r.rows),
                  static_cast<long long>(r.bad_rows), static_cast<long long>(r.media),
                  static_cast<long long>(r.media_missing), static_cast<long long>(r.media_unreadable),
                  static_cast<long long>(r.tokens_min), r.tokens_mean, static_cast<long long>(r.tokens_max),
                  static_cast<long long>(r.truncated), static_cast<long long>(r.fully_masked));
      for (const auto& e : r.errors) std::printf("  %s\n", e.c_str());
    }
  }
  return bad > 0 ? 1 : 0;
}

}  // namespace lego::cli
