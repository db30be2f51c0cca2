// lego train: one training stage from a config; lego data check: the same config's data, validated.
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>

#include "commands.h"
#include "lego/config/config.h"
#include "lego/dist/world.h"
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

// A TCP port free on 127.0.0.1 now (the kernel's pick), for the ranks of --nproc to meet on.
int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(ErrorKind::Io, std::string("--nproc: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error(ErrorKind::Io, "--nproc: no free local port: " + why);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// lego train --nproc N: N copies of this command (without --nproc) as ranks 0..N-1 of one machine, with the
// variables torchrun would set. Each dies with this process; when one fails, the others are stopped and
// its exit status is ours.
int spawn_ranks(int n, const Args& args) {
  if (dist::detect_world().distributed()) {
    throw Error(ErrorKind::InvalidArgument, "--nproc: this process is already a rank of a launcher (WORLD_SIZE or "
                                            "SLURM_NTASKS is set); use one or the other");
  }
  const int port = free_local_port();
  std::vector<std::string> argv{"lego", "train"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::map<pid_t, int> children;
  auto stop_all = [&](int sig) {
    for (const auto& [pid, rank] : children) ::kill(pid, sig);
  };
  for (int rank = 0; rank < n; ++rank) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    const std::map<std::string, std::string> set{
        {"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(n)}, {"LOCAL_RANK", std::to_string(rank)},
        {"LOCAL_WORLD_SIZE", std::to_string(n)}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)},
        {"LEGO_NPROC", std::to_string(n)}};
    env.erase(std::remove_if(env.begin(), env.end(), [&](const std::string& kv) {
                return set.count(kv.substr(0, kv.find('='))) > 0;
              }), env.end());
    for (const auto& [k, v] : set) env.push_back(k + "=" + v);
    std::vector<char*> cargv, cenv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      stop_all(SIGTERM);
      throw Error(ErrorKind::Io, std::string("--nproc: fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::execve("/proc/self/exe", cargv.data(), cenv.data());
      ::_exit(127);
    }
    children[pid] = rank;
  }
  int result = 0;
  while (!children.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    const auto it = children.find(pid);
    if (it == children.end()) continue;
    const int rank = it->second;
    children.erase(it);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      std::cerr << "lego train: rank " << rank << " of " << n << " exited with status " << code
                << "; stopping the others\n";
      stop_all(SIGTERM);
    }
  }
  return result;
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
  int nproc = 1;
  RuntimeFlags runtime;
  po::options_description d("train");
  d.add_options()
      ("config", po::value(&config_file)->required(), "the stage's INI file (docs/training.md)")
      ("set", po::value(&sets)->composing(), "override one key: section.key=value (repeatable)")
      ("resume", po::bool_switch(&resume), "continue from the newest complete checkpoint under train.out")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)")
      ("nproc", po::value(&nproc), "run N ranks of data parallel training on this machine (as torchrun "
                                   "--nproc-per-node N would); train.batch_size is per rank");
  d.add(runtime_flags(runtime));
  if (!parse_args(args, d, "lego train --config FILE [--set section.key=value ...] [--resume] [--nproc N]")) return 0;
  if (nproc < 1 || nproc > 1024) throw Error(ErrorKind::InvalidArgument, "--nproc must be in [1, 1024], not " + std::to_string(nproc));
  if (nproc > 1) {
    Args rest;
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "--nproc") {
        ++i;
        continue;
      }
      if (args[i].rfind("--nproc=", 0) == 0) continue;
      rest.push_back(args[i]);
    }
    return spawn_ranks(nproc, rest);
  }
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
  // Rank 0 reports; the other ranks of a distributed run end quietly.
  if (dist::detect_world().rank != 0) return 0;
  const auto out = result.model_dir.parent_path();
  write_loss_plot(out / "metrics.jsonl", out / "loss.png");
  std::cout << "trained " << result.steps << " steps on " << result.examples << " examples (final loss "
            << result.final_loss << "; skipped rows " << result.skipped_rows << ", fully masked "
            << result.fully_masked_rows << ", truncated " << result.truncated_rows << ")\n"
            << "model: " << result.model_dir.string() << "\nloss curve: " << (out / "loss.png").string() << "\n";
  return 0;
}

int run_consolidate(const Args& args) {
  std::string config_file, checkpoint, out;
  std::vector<std::string> sets, plugin_dirs;
  po::options_description d("consolidate");
  d.add_options()
      ("config", po::value(&config_file)->required(), "the stage's INI file (as given to lego train)")
      ("set", po::value(&sets)->composing(), "override one key: section.key=value (repeatable)")
      ("checkpoint", po::value(&checkpoint), "the checkpoint folder (default: the newest under train.out/checkpoints)")
      ("out", po::value(&out)->required(), "the model directory to write")
      ("plugin-dir", po::value(&plugin_dirs)->composing(), "where to look for modality plugins first (repeatable)");
  if (!parse_args(args, d, "lego consolidate --config FILE [--set ...] [--checkpoint DIR] --out DIR")) return 0;
  const auto used = train::consolidate(read_config(config_file, sets), host_for(args), checkpoint, out);
  std::cout << "model: " << out << " (from " << used.string() << ")\n";
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
