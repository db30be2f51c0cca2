// Where this process stands in a distributed run (DESIGN.md, core/dist): its rank, the number of ranks and
// where they meet, read from the environment the usual launchers set. torchrun (and `lego train --nproc`)
// sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Slurm's srun sets
// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the job's node list, whose first host is then the meeting
// point (MASTER_ADDR and MASTER_PORT still override it). With none of them, the run is one process.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace lego::dist {

struct World {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // Who set the variables: "none" (one process), "torchrun", "lego train --nproc" or "slurm".
  std::string launcher = "none";
  // torchrun's elastic agent already serves the rendezvous store at MASTER_ADDR:MASTER_PORT
  // (TORCHELASTIC_USE_AGENT_STORE=True): every rank connects to it as a client.
  bool agent_store = false;

  bool distributed() const { return size > 1; }
};

// Reads one variable; std::nullopt when it is not set.
using Environment = std::function<std::optional<std::string>(const std::string&)>;

// The process's own environment.
Environment process_environment();

// The world the environment describes. A variable that is set but malformed or out of range (RANK not
// below WORLD_SIZE, a port outside 1..65535, a node list without a host) is an InvalidArgument error naming
// it and its value.
World detect_world(const Environment& env = process_environment());

// The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07", "node1,node2" -> "node1".
std::string first_host(const std::string& nodelist);

}  // namespace lego::dist
