// A main() for gtest binaries run under mpirun (tests/parallel/mpi_gtest_main.cpp): initializes
// MPI, runs the tests on every rank and returns the same exit code on all of them: 1 when any
// rank failed, else 77 (ctest: Skipped) when any rank skipped a test, else 0
// (tests/gtest_outcome.h). Only rank 0 prints the usual gtest output; the other ranks print their
// failures, prefixed with "[rank r]". A fatal failure (ASSERT_*) on any rank aborts the whole job,
// since that rank skipped the rest of its test and the collectives of the ranks no longer match.
#pragma once

#include "parallel/communicator.h"

namespace shardlm::mpitest {

// All ranks of the job (an MpiCommunicator over MPI_COMM_WORLD); valid while tests run.
Communicator& World();

}  // namespace shardlm::mpitest
