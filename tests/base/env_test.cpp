// This rank's place on its node from the launchers' variables (base/env.h): Open MPI, MPICH/Hydra
// and Slurm's srun, each alone and together the way an mpirun inside a Slurm job sees them, and
// the Slurm task-list format ("2(x3),1").
#include "base/env.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

namespace shardlm {
namespace {

// Every variable NodeLocalRank / NodeLocalSize read, cleared for the test and restored after.
class EnvTest : public ::testing::Test {
 protected:
  static constexpr const char* kVars[] = {
      "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALRANKID",
      "MPI_LOCALNRANKS",            "SLURM_LOCALID",              "SLURM_NODEID",
      "SLURM_STEP_TASKS_PER_NODE",  "SLURM_TASKS_PER_NODE",       "SLURM_NTASKS_PER_NODE"};

  void SetUp() override {
    for (const char* v : kVars) {
      const char* old = std::getenv(v);
      saved_[v] = old != nullptr ? std::optional<std::string>(old) : std::nullopt;
      ::unsetenv(v);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }
  static void Set(const char* name, const char* value) { ::setenv(name, value, 1); }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST_F(EnvTest, NoLauncherIsRankZeroOfOne) {
  EXPECT_EQ(NodeLocalRank(), 0);
  EXPECT_EQ(NodeLocalSize(), 1);
}

TEST_F(EnvTest, OpenMpi) {
  Set("OMPI_COMM_WORLD_LOCAL_RANK", "3");
  Set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  EXPECT_EQ(NodeLocalRank(), 3);
  EXPECT_EQ(NodeLocalSize(), 4);
}

TEST_F(EnvTest, Hydra) {
  Set("MPI_LOCALRANKID", "1");
  Set("MPI_LOCALNRANKS", "2");
  EXPECT_EQ(NodeLocalRank(), 1);
  EXPECT_EQ(NodeLocalSize(), 2);
}

TEST_F(EnvTest, SrunReadsThisNodesEntryOfTheTaskList) {
  // srun -n 7 over 4 nodes: 2 tasks on nodes 0..2, 1 on node 3; this task: local id 1 on node 2.
  Set("SLURM_LOCALID", "1");
  Set("SLURM_NODEID", "2");
  Set("SLURM_TASKS_PER_NODE", "2(x3),1");
  EXPECT_EQ(NodeLocalRank(), 1);
  EXPECT_EQ(NodeLocalSize(), 2);
  // The step's list wins over the job's.
  Set("SLURM_STEP_TASKS_PER_NODE", "4(x3),1");
  EXPECT_EQ(NodeLocalSize(), 4);
  // On the last node.
  Set("SLURM_LOCALID", "0");
  Set("SLURM_NODEID", "3");
  EXPECT_EQ(NodeLocalSize(), 1);
}

TEST_F(EnvTest, SrunWithoutATaskListUsesNtasksPerNode) {
  Set("SLURM_LOCALID", "2");
  Set("SLURM_NTASKS_PER_NODE", "8");
  EXPECT_EQ(NodeLocalRank(), 2);
  EXPECT_EQ(NodeLocalSize(), 8);
  // A malformed list is not believed.
  Set("SLURM_TASKS_PER_NODE", "2(x");
  EXPECT_EQ(NodeLocalSize(), 8);
}

TEST_F(EnvTest, SizeIsNeverBelowRankPlusOne) {
  Set("SLURM_LOCALID", "5");
  EXPECT_EQ(NodeLocalRank(), 5);
  EXPECT_EQ(NodeLocalSize(), 6);
}

// mpirun inside an sbatch job: every rank inherits the batch step's SLURM_LOCALID (0) and its
// task list; Open MPI's own variables are the ranks' real places, both rank and size.
TEST_F(EnvTest, MpiLauncherWinsOverAnInheritedSlurmEnvironment) {
  Set("SLURM_LOCALID", "0");
  Set("SLURM_NODEID", "0");
  Set("SLURM_TASKS_PER_NODE", "1");
  Set("OMPI_COMM_WORLD_LOCAL_RANK", "2");
  Set("OMPI_COMM_WORLD_LOCAL_SIZE", "3");
  EXPECT_EQ(NodeLocalRank(), 2);
  EXPECT_EQ(NodeLocalSize(), 3);
}

TEST(SlurmTasksOnNodeTest, ParsesRepeatsAndPlainCounts) {
  EXPECT_EQ(SlurmTasksOnNode("4", 0), 4);
  EXPECT_EQ(SlurmTasksOnNode("4", 1), -1);
  EXPECT_EQ(SlurmTasksOnNode("2(x3),1", 0), 2);
  EXPECT_EQ(SlurmTasksOnNode("2(x3),1", 2), 2);
  EXPECT_EQ(SlurmTasksOnNode("2(x3),1", 3), 1);
  EXPECT_EQ(SlurmTasksOnNode("2(x3),1", 4), -1);
  EXPECT_EQ(SlurmTasksOnNode("1,3(x2),2", 2), 3);
  EXPECT_EQ(SlurmTasksOnNode("1,3(x2),2", 3), 2);
  EXPECT_EQ(SlurmTasksOnNode("2(x3),1", -1), -1);
  for (const char* bad : {"", "x", "2(3)", "2(x)", "2(x0)", "2(x3", "-1", "2,,1", "2(x3)1"}) {
    EXPECT_EQ(SlurmTasksOnNode(bad, 0), -1) << "'" << bad << "'";
  }
}

}  // namespace
}  // namespace shardlm
