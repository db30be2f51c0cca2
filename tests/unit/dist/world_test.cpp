// Where a process stands in a distributed run, from the variables torchrun and Slurm set.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "lego/dist/world.h"
#include "lego/sdk/error.h"

namespace lego::dist {
namespace {

Environment env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    detect_world(env_of(vars));
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    return e.what();
  }
  return "";
}

TEST(World, NoLauncherIsOneProcess) {
  const auto w = detect_world(env_of({}));
  EXPECT_EQ(w.size, 1);
  EXPECT_EQ(w.rank, 0);
  EXPECT_FALSE(w.distributed());
  EXPECT_EQ(w.launcher, "none");
}

TEST(World, TorchrunVariables) {
  const auto w = detect_world(env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                                      {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "29512"},
                                      {"TORCHELASTIC_USE_AGENT_STORE", "True"}}));
  EXPECT_EQ(w.launcher, "torchrun");
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.size, 8);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.master_addr, "10.0.0.5");
  EXPECT_EQ(w.master_port, 29512);
  EXPECT_TRUE(w.agent_store);
  EXPECT_TRUE(w.distributed());
}

TEST(World, SlurmVariablesMeetOnTheFirstNodeOnAPortOfTheJob) {
  const auto w = detect_world(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                                      {"SLURM_NTASKS_PER_NODE", "8(x2)"}, {"SLURM_JOB_NODELIST", "gpu[007-008]"},
                                      {"SLURM_JOB_ID", "123456"}}));
  EXPECT_EQ(w.launcher, "slurm");
  EXPECT_EQ(w.rank, 5);
  EXPECT_EQ(w.size, 16);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 8);
  EXPECT_EQ(w.master_addr, "gpu007");
  EXPECT_EQ(w.master_port, 20000 + 123456 % 10000);
  EXPECT_FALSE(w.agent_store);
}

TEST(World, MasterVariablesOverrideSlurmsNodeList) {
  const auto w = detect_world(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "a,b"},
                                      {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "31000"}}));
  EXPECT_EQ(w.master_addr, "127.0.0.1");
  EXPECT_EQ(w.master_port, 31000);
}

TEST(World, FirstHostOfANodeList) {
  EXPECT_EQ(first_host("node1"), "node1");
  EXPECT_EQ(first_host("node1,node2"), "node1");
  EXPECT_EQ(first_host("gpu[07-09,12],cpu1"), "gpu07");
  EXPECT_EQ(first_host("rack1-n[3,5]"), "rack1-n3");
  EXPECT_THROW(first_host(""), Error);
  EXPECT_THROW(first_host("gpu[07-09"), Error);
  EXPECT_THROW(first_host("gpu[a-b]"), Error);
}

TEST(World, MalformedVariablesAreNamed) {
  auto says = [](const std::map<std::string, std::string>& vars, const std::string& part) {
    const auto what = error_of(vars);
    EXPECT_NE(what.find(part), std::string::npos) << what;
  };
  says({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "x"}}, "RANK='2' is outside [0, 1]");
  says({{"WORLD_SIZE", "two"}, {"RANK", "0"}}, "WORLD_SIZE='two' is not an integer");
  says({{"WORLD_SIZE", "0"}, {"RANK", "0"}}, "WORLD_SIZE='0'");
  says({{"WORLD_SIZE", "2"}}, "RANK is not");
  says({{"WORLD_SIZE", "2"}, {"RANK", "0"}}, "MASTER_ADDR is not set");
  says({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT='70000'");
  says({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "12ab"}}, "MASTER_PORT='12ab'");
  says({{"WORLD_SIZE", "2"}, {"RANK", " 1"}, {"MASTER_ADDR", "h"}}, "RANK=' 1'");
  says({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "1"}}, "neither MASTER_ADDR nor a Slurm node list");
  says({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "9"}, {"SLURM_NODELIST", "n1"}}, "SLURM_PROCID='9'");
  says({{"WORLD_SIZE", "4"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}},
       "local rank 2");
}

}  // namespace
}  // namespace lego::dist
