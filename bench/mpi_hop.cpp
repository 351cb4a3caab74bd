// The cost of one pipeline hand-over between two MPI ranks, without a model: rank 0 sends a
// message of each size to rank 1, which sends it back (ping-pong), `--iters` times after a
// warm-up; prints the median and the minimum one-way time (half a round trip) per size. Placed
// on one node (shared memory or TCP) or across nodes, it isolates what bench/netns_pp.sh's
// end-to-end step times cannot resolve on a busy machine.
//   mpirun -np 2 build/bin/mpi_hop --sizes 8,8192,262144
// Rank 0 prints a table and one JSON line.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"

int main(int argc, char** argv) {
  CLI::App app{"mpi_hop: one-way time of an MPI message between two ranks, by size"};
  std::vector<int64_t> sizes{8, 8192, 262144, 1048576};
  int iters = 200, warmup = 20;
  app.add_option("--sizes", sizes, "Message sizes in bytes")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--iters", iters, "Round trips measured per size")->check(CLI::Range(1, 1000000));
  app.add_option("--warmup", warmup, "Round trips before measuring")->check(CLI::Range(0, 1000000));
  CLI11_PARSE(app, argc, argv);

  MPI_Init(&argc, &argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_hop: needs exactly 2 ranks, got %d\n", size);
    MPI_Finalize();
    return 2;
  }
  const int peer = 1 - rank;
  std::string json = "{\"sizes\":[";
  if (rank == 0) std::printf("%12s %14s %14s\n", "bytes", "median us", "min us");
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<char> buf(static_cast<size_t>(sizes[s]), 1);
    const int n = static_cast<int>(sizes[s]);
    std::vector<double> one_way;
    one_way.reserve(iters);
    for (int i = 0; i < warmup + iters; ++i) {
      const double t0 = MPI_Wtime();
      if (rank == 0) {
        MPI_Send(buf.data(), n, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
        MPI_Recv(buf.data(), n, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else {
        MPI_Recv(buf.data(), n, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(buf.data(), n, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
      }
      if (i >= warmup) one_way.push_back((MPI_Wtime() - t0) * 1e6 / 2);
    }
    std::sort(one_way.begin(), one_way.end());
    const double median = one_way[one_way.size() / 2], least = one_way.front();
    if (rank == 0) {
      std::printf("%12lld %14.1f %14.1f\n", static_cast<long long>(sizes[s]), median, least);
      char item[128];
      std::snprintf(item, sizeof(item), "%s{\"bytes\":%lld,\"median_us\":%.1f,\"min_us\":%.1f}",
                    s == 0 ? "" : ",", static_cast<long long>(sizes[s]), median, least);
      json += item;
    }
  }
  if (rank == 0) std::printf("%s],\"iters\":%d}\n", json.c_str(), iters);
  MPI_Finalize();
  return 0;
}
