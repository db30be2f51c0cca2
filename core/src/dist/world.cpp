#include "lego/dist/world.h"

#include <cctype>
#include <cstdlib>

#include "lego/sdk/error.h"

namespace lego::dist {
namespace {

std::string shown(const std::string& name, const std::string& value) { return name + "='" + value + "'"; }

// A whole decimal integer in [lo, hi], or an InvalidArgument naming the variable.
int64_t parse_int(const std::string& name, const std::string& value, int64_t lo, int64_t hi) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used, 10);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != value.size() || value.front() == '+' || std::isspace(static_cast<unsigned char>(value.front()))) {
    throw Error(ErrorKind::InvalidArgument, "environment: " + shown(name, value) + " is not an integer");
  }
  if (v < lo || v > hi) {
    throw Error(ErrorKind::InvalidArgument, "environment: " + shown(name, value) + " is outside [" +
                                                std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return v;
}

int get_int(const Environment& env, const std::string& name, int64_t lo, int64_t hi, int fallback) {
  const auto v = env(name);
  return v ? static_cast<int>(parse_int(name, *v, lo, hi)) : fallback;
}

constexpr int64_t kMaxRanks = 1 << 20;

}  // namespace

Environment process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::string first_host(const std::string& nodelist) {
  // The first entry: up to the first comma that is not inside brackets.
  std::string entry;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    entry += c;
  }
  const auto open = entry.find('[');
  std::string host = entry;
  if (open != std::string::npos) {
    const auto close = entry.find(']', open);
    if (close == std::string::npos || close != entry.size() - 1) {
      throw Error(ErrorKind::InvalidArgument, "node list '" + nodelist + "': unbalanced brackets");
    }
    // The first range's first number, zero padding kept ("gpu[007-009]" -> "gpu007").
    std::string first = entry.substr(open + 1);
    first = first.substr(0, first.find_first_of(",-]"));
    if (first.empty() || first.find_first_not_of("0123456789") != std::string::npos) {
      throw Error(ErrorKind::InvalidArgument, "node list '" + nodelist + "': '" + entry + "' is not a host range");
    }
    host = entry.substr(0, open) + first;
  }
  if (host.empty() || host.find_first_of(" \t[]") != std::string::npos) {
    throw Error(ErrorKind::InvalidArgument, "node list '" + nodelist + "' names no host");
  }
  return host;
}

World detect_world(const Environment& env) {
  World w;
  if (env("WORLD_SIZE")) {
    w.launcher = "torchrun";
    w.size = get_int(env, "WORLD_SIZE", 1, kMaxRanks, 1);
    const auto rank = env("RANK");
    if (!rank) throw Error(ErrorKind::InvalidArgument, "environment: WORLD_SIZE is set but RANK is not");
    w.rank = static_cast<int>(parse_int("RANK", *rank, 0, w.size - 1));
    w.local_size = get_int(env, "LOCAL_WORLD_SIZE", 1, w.size, 1);
    w.local_rank = get_int(env, "LOCAL_RANK", 0, kMaxRanks - 1, 0);
    if (w.size > 1 && !env("MASTER_ADDR")) {
      throw Error(ErrorKind::InvalidArgument, "environment: WORLD_SIZE=" + std::to_string(w.size) + " but MASTER_ADDR is not set");
    }
    w.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
    if (env("LEGO_NPROC")) w.launcher = "lego train --nproc";
  } else if (const auto ntasks = env("SLURM_NTASKS")) {
    w.launcher = "slurm";
    w.size = static_cast<int>(parse_int("SLURM_NTASKS", *ntasks, 1, kMaxRanks));
    w.rank = get_int(env, "SLURM_PROCID", 0, w.size - 1, 0);
    w.local_rank = get_int(env, "SLURM_LOCALID", 0, kMaxRanks - 1, 0);
    if (const auto per_node = env("SLURM_NTASKS_PER_NODE")) {
      // "4" or "4(x2)": the tasks on this node.
      const auto n = per_node->substr(0, per_node->find('('));
      w.local_size = static_cast<int>(parse_int("SLURM_NTASKS_PER_NODE", n, 1, w.size));
    }
    if (!env("MASTER_ADDR")) {
      std::optional<std::string> nodes;
      for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
        if ((nodes = env(name))) break;
      }
      if (!nodes && w.size > 1) {
        throw Error(ErrorKind::InvalidArgument, "environment: SLURM_NTASKS=" + std::to_string(w.size) +
                                                    " but neither MASTER_ADDR nor a Slurm node list is set");
      }
      if (nodes) w.master_addr = first_host(*nodes);
    }
    // Jobs sharing a node meet on different ports: 20000 + job id mod 10000, unless MASTER_PORT says.
    if (const auto job = env("SLURM_JOB_ID")) {
      w.master_port = static_cast<int>(20000 + parse_int("SLURM_JOB_ID", *job, 0, int64_t{1} << 62) % 10000);
    }
  }
  if (const auto addr = env("MASTER_ADDR")) {
    if (addr->empty()) throw Error(ErrorKind::InvalidArgument, "environment: MASTER_ADDR is empty");
    w.master_addr = *addr;
  }
  w.master_port = get_int(env, "MASTER_PORT", 1, 65535, w.master_port);
  if (w.local_rank >= w.local_size && w.local_size > 1) {
    throw Error(ErrorKind::InvalidArgument, "environment: local rank " + std::to_string(w.local_rank) +
                                                " is not below the local world size " + std::to_string(w.local_size));
  }
  return w;
}

}  // namespace lego::dist
