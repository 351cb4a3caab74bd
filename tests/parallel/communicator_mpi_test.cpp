// MpiCommunicator (and the local one) under mpirun: run with any number of ranks >= 2
// (registered at 2 and 3). Every rank runs every test; collectives are called in the same order
// everywhere, data checks are EXPECTs so one bad value does not desynchronize the ranks.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

Communicator& World() { return mpitest::World(); }

// A recognizable byte for (rank, index).
uint8_t Pattern(int rank, size_t i) { return static_cast<uint8_t>(rank * 37 + i * 11 + 5); }

std::vector<uint8_t> Bytes(int rank, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Pattern(rank, i);
  return v;
}

// Lowers the per-call MPI transfer size for one test, to run the chunked paths on small buffers.
class SmallChunks {
 public:
  explicit SmallChunks(size_t bytes) { MpiCommunicator::SetMaxChunkBytesForTesting(bytes); }
  ~SmallChunks() { MpiCommunicator::SetMaxChunkBytesForTesting(SIZE_MAX); }
};

TEST(MpiCommunicatorTest, WorldMatchesMpiCommWorld) {
  int rank = -1;
  int size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(World().rank(), rank);
  EXPECT_EQ(World().size(), size);
  // Fatal (the job aborts): with one rank the ring below would send to itself and hang.
  ASSERT_GE(World().size(), 2) << "run this test with mpirun -np 2 or more";
  EXPECT_EQ(World().name(), "mpi world");
  EXPECT_TRUE(MpiSession::LaunchedByMpirun());
}

TEST(MpiCommunicatorTest, AllReduceSumOneValue) {
  const int n = World().size();
  float x = static_cast<float>(World().rank() + 1);
  ASSERT_OK(World().AllReduceSum(&x, 1));
  EXPECT_EQ(x, static_cast<float>(n * (n + 1) / 2));
}

// Expected sum over ranks of rank * 0.5 + i % 7 (exact in float at these sizes).
float ExpectedSum(int n, size_t i) {
  return 0.5f * static_cast<float>(n * (n - 1) / 2) + static_cast<float>(n * (i % 7));
}

void CheckLargeAllReduce(size_t count) {
  const int n = World().size();
  std::vector<float> data(count);
  for (size_t i = 0; i < count; ++i) data[i] = 0.5f * World().rank() + static_cast<float>(i % 7);
  ASSERT_OK(World().AllReduceSum(data.data(), data.size()));
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) {
    if (data[i] != ExpectedSum(n, i) && wrong++ < 5) {
      ADD_FAILURE() << "data[" << i << "] = " << data[i] << ", want " << ExpectedSum(n, i);
    }
  }
  EXPECT_EQ(wrong, 0u);
}

TEST(MpiCommunicatorTest, AllReduceSumLarge) { CheckLargeAllReduce(1000003); }

TEST(MpiCommunicatorTest, AllReduceSumChunked) {
  SmallChunks chunks(4000);  // 1000 floats per MPI_Allreduce
  CheckLargeAllReduce(10007);
}

TEST(MpiCommunicatorTest, AllReduceSumEmpty) { ASSERT_OK(World().AllReduceSum(nullptr, 0)); }

void CheckAllGather(size_t bytes) {
  const int n = World().size();
  const std::vector<uint8_t> in = Bytes(World().rank(), bytes);
  std::vector<uint8_t> out(n * bytes, 0);
  ASSERT_OK(World().AllGather(in.data(), out.data(), bytes));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::vector<uint8_t>(out.begin() + r * bytes, out.begin() + (r + 1) * bytes),
              Bytes(r, bytes))
        << "piece of rank " << r << ", " << bytes << " bytes each";
  }
}

TEST(MpiCommunicatorTest, AllGather) {
  CheckAllGather(1);
  CheckAllGather(4099);
}

TEST(MpiCommunicatorTest, AllGatherChunked) {
  SmallChunks chunks(1000);  // 4099 bytes: 5 pieces, the last one short
  CheckAllGather(4099);
}

TEST(MpiCommunicatorTest, AllGatherInPlace) {
  // This rank's piece already sits in its slot of `out` (MPI_IN_PLACE).
  const int n = World().size();
  const size_t bytes = 333;
  for (size_t chunk : {size_t{0}, size_t{100}}) {
    std::unique_ptr<SmallChunks> small;
    if (chunk != 0) small = std::make_unique<SmallChunks>(chunk);
    std::vector<uint8_t> out(n * bytes, 0);
    const std::vector<uint8_t> mine = Bytes(World().rank(), bytes);
    std::memcpy(out.data() + World().rank() * bytes, mine.data(), bytes);
    ASSERT_OK(World().AllGather(out.data() + World().rank() * bytes, out.data(), bytes));
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(std::vector<uint8_t>(out.begin() + r * bytes, out.begin() + (r + 1) * bytes),
                Bytes(r, bytes))
          << "piece of rank " << r << ", chunk " << chunk;
    }
  }
}

TEST(MpiCommunicatorTest, AllGatherOverlappingInput) {
  // `in` overlaps `out` but is not this rank's slot: the communicator must copy it first.
  const int n = World().size();
  const size_t bytes = 64;
  std::vector<uint8_t> out(n * bytes, 0);
  const std::vector<uint8_t> mine = Bytes(World().rank(), bytes);
  const size_t at = ((World().rank() + 1) % n) * bytes;  // the next rank's slot
  std::memcpy(out.data() + at, mine.data(), bytes);
  ASSERT_OK(World().AllGather(out.data() + at, out.data(), bytes));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::vector<uint8_t>(out.begin() + r * bytes, out.begin() + (r + 1) * bytes),
              Bytes(r, bytes))
        << "piece of rank " << r;
  }
}

void CheckBroadcastFromEachRoot(size_t bytes) {
  for (int root = 0; root < World().size(); ++root) {
    std::vector<uint8_t> data =
        World().rank() == root ? Bytes(root, bytes) : std::vector<uint8_t>(bytes, 0);
    ASSERT_OK(World().Broadcast(data.data(), data.size(), root));
    EXPECT_EQ(data, Bytes(root, bytes)) << "root " << root;
  }
}

TEST(MpiCommunicatorTest, BroadcastFromEachRoot) { CheckBroadcastFromEachRoot(100003); }

TEST(MpiCommunicatorTest, BroadcastChunked) {
  SmallChunks chunks(4096);
  CheckBroadcastFromEachRoot(100003);
}

// Rank r sends to r + 1 and receives from r - 1 (mod size). Rank 0 sends first, every other
// rank receives first: blocking calls cannot deadlock, whatever the message size.
void CheckRing(size_t bytes, int tag) {
  const int n = World().size();
  const int me = World().rank();
  const int next = (me + 1) % n;
  const int prev = (me + n - 1) % n;
  const std::vector<uint8_t> mine = Bytes(me, bytes);
  std::vector<uint8_t> got(bytes, 0);
  if (me == 0) {
    ASSERT_OK(World().Send(mine.data(), bytes, next, tag));
    ASSERT_OK(World().Recv(got.data(), bytes, prev, tag));
  } else {
    ASSERT_OK(World().Recv(got.data(), bytes, prev, tag));
    ASSERT_OK(World().Send(mine.data(), bytes, next, tag));
  }
  EXPECT_EQ(got, Bytes(prev, bytes)) << bytes << " bytes from rank " << prev;
}

TEST(MpiCommunicatorTest, SendRecvRing) {
  CheckRing(1, 0);
  CheckRing(1 << 20, 7);  // large enough for the rendezvous protocol
  CheckRing(0, 3);
}

TEST(MpiCommunicatorTest, SendRecvRingChunked) {
  SmallChunks chunks(1000);
  CheckRing(4099, 1);
}

TEST(MpiCommunicatorTest, RecvErrors) {
  // Ranks 0 and 1 only. A short message and a too-long one both come back as InvalidArgument
  // naming the call and the group; nothing aborts.
  const int me = World().rank();
  std::vector<uint8_t> buf(20, 0);
  if (me == 0) {
    ASSERT_OK(World().Send(buf.data(), 10, 1, /*tag=*/5));
    ASSERT_OK(World().Send(buf.data(), 20, 1, /*tag=*/6));
  } else if (me == 1) {
    absl::Status short_message = World().Recv(buf.data(), 20, 0, /*tag=*/5);
    EXPECT_EQ(short_message.code(), absl::StatusCode::kInvalidArgument) << short_message;
    EXPECT_NE(short_message.message().find("MPI_Recv on mpi world (rank 1 of "),
              std::string::npos)
        << short_message;
    EXPECT_NE(short_message.message().find("got 10"), std::string::npos) << short_message;

    absl::Status truncated = World().Recv(buf.data(), 10, 0, /*tag=*/6);
    EXPECT_EQ(truncated.code(), absl::StatusCode::kInvalidArgument) << truncated;
    EXPECT_NE(truncated.message().find("MPI_Recv("), std::string::npos) << truncated;
    EXPECT_NE(truncated.message().find(" on mpi world (rank 1 of "), std::string::npos)
        << truncated;
    EXPECT_NE(truncated.message().find("mpi_communicator.cpp:"), std::string::npos) << truncated;
  }
  // Local argument checks, on every rank.
  absl::Status bad_peer = World().Send(buf.data(), 1, World().size(), 0);
  EXPECT_EQ(bad_peer.code(), absl::StatusCode::kInvalidArgument) << bad_peer;
  absl::Status bad_root = World().Broadcast(buf.data(), 1, -1);
  EXPECT_EQ(bad_root.code(), absl::StatusCode::kInvalidArgument) << bad_root;
  ASSERT_OK(World().Barrier());
}

TEST(MpiCommunicatorTest, Barrier) {
  for (int i = 0; i < 3; ++i) ASSERT_OK(World().Barrier());
}

TEST(MpiCommunicatorTest, SplitByParity) {
  const int n = World().size();
  const int me = World().rank();
  const int color = me % 2;
  absl::StatusOr<std::unique_ptr<Communicator>> group = World().Split(color, me, "tp");
  ASSERT_TRUE(group.ok()) << group.status();
  Communicator& tp = **group;
  EXPECT_EQ(tp.size(), color == 0 ? (n + 1) / 2 : n / 2);
  EXPECT_EQ(tp.rank(), me / 2);  // ordered by key = world rank
  EXPECT_EQ(tp.name(), "mpi tp(color " + std::to_string(color) + ")");

  // Sum of the world ranks of this parity.
  float x = static_cast<float>(me);
  ASSERT_OK(tp.AllReduceSum(&x, 1));
  int want = 0;
  for (int r = color; r < n; r += 2) want += r;
  EXPECT_EQ(x, static_cast<float>(want));

  // A gather inside the group lists its members in group order.
  std::vector<int> members(tp.size(), -1);
  ASSERT_OK(tp.AllGather(&me, members.data(), sizeof(int)));
  for (int i = 0; i < tp.size(); ++i) EXPECT_EQ(members[i], color + 2 * i);
  ASSERT_OK(tp.Barrier());
}

TEST(MpiCommunicatorTest, SplitOrdersByKey) {
  // One group of everyone, keyed in reverse: group rank = size - 1 - world rank.
  const int n = World().size();
  absl::StatusOr<std::unique_ptr<Communicator>> all =
      World().Split(0, n - 1 - World().rank(), "rev");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ((*all)->size(), n);
  EXPECT_EQ((*all)->rank(), n - 1 - World().rank());
  // Split of a split.
  absl::StatusOr<std::unique_ptr<Communicator>> again = (*all)->Split(1, 0, "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->size(), n);
  EXPECT_EQ((*again)->rank(), (*all)->rank());  // equal keys: ordered by rank in `all`
}

// All-to-all with uneven (some empty) pieces, and a piece to itself (what expert parallelism
// keeps for its own experts): rank s sends AllToAllBytes(s, d) bytes of pattern s * 16 + d to d.
size_t AllToAllBytes(int from, int to) {
  return from == to ? 29 : static_cast<size_t>((from * 7 + to * 3) % 5) * 13;
}

TEST(MpiCommunicatorTest, AllToAllV) {
  const int n = World().size(), me = World().rank();
  std::vector<size_t> send(n), recv(n);
  std::vector<uint8_t> in, want;
  for (int p = 0; p < n; ++p) {
    send[p] = AllToAllBytes(me, p);
    recv[p] = AllToAllBytes(p, me);
    const std::vector<uint8_t> out_piece = Bytes(me * 16 + p, send[p]);
    in.insert(in.end(), out_piece.begin(), out_piece.end());
    const std::vector<uint8_t> in_piece = Bytes(p * 16 + me, recv[p]);
    want.insert(want.end(), in_piece.begin(), in_piece.end());
  }
  std::vector<uint8_t> out(want.size(), 0);
  ASSERT_OK(World().AllToAllV(in.data(), send, out.data(), recv));
  EXPECT_EQ(out, want);
  // Wrong number of counts: refused locally, before any collective.
  const absl::Status bad = World().AllToAllV(in.data(), std::span<const size_t>(send).first(1),
                                             out.data(), recv);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_NE(bad.message().find("expected " + std::to_string(n)), std::string::npos) << bad;
}

TEST(LocalCommunicatorTest, OneRankIdentity) {
  std::unique_ptr<Communicator> local = CreateLocalCommunicator();
  EXPECT_EQ(local->rank(), 0);
  EXPECT_EQ(local->size(), 1);
  EXPECT_EQ(local->name(), "local");

  std::vector<float> x = {1.5f, -2.0f, 3.25f};
  ASSERT_OK(local->AllReduceSum(x.data(), x.size()));
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.25f}));

  const std::vector<uint8_t> in = Bytes(3, 17);
  std::vector<uint8_t> out(17, 0);
  ASSERT_OK(local->AllGather(in.data(), out.data(), in.size()));
  EXPECT_EQ(out, in);
  ASSERT_OK(local->AllGather(out.data(), out.data(), out.size()));  // in place
  EXPECT_EQ(out, in);
  // Overlapping: out starts 4 bytes into in (memmove semantics).
  std::vector<uint8_t> buf = Bytes(1, 24);
  ASSERT_OK(local->AllGather(buf.data(), buf.data() + 4, 20));
  const std::vector<uint8_t> src = Bytes(1, 24);
  EXPECT_TRUE(std::equal(buf.begin() + 4, buf.end(), src.begin()));

  ASSERT_OK(local->Broadcast(out.data(), out.size(), 0));
  ASSERT_OK(local->Barrier());

  std::vector<uint8_t> all(in.size(), 0);
  const size_t count[] = {in.size()};
  ASSERT_OK(local->AllToAllV(in.data(), count, all.data(), count));
  EXPECT_EQ(all, in);
  const size_t fewer[] = {in.size() - 1};
  EXPECT_EQ(local->AllToAllV(in.data(), count, all.data(), fewer).code(),
            absl::StatusCode::kInvalidArgument);

  absl::Status send = local->Send(in.data(), in.size(), 0);
  EXPECT_EQ(send.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(send.message().find("Send"), std::string::npos) << send;
  absl::Status recv = local->Recv(out.data(), out.size(), 0);
  EXPECT_EQ(recv.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(recv.message().find("Recv"), std::string::npos) << recv;

  absl::StatusOr<std::unique_ptr<Communicator>> split = local->Split(3, 0, "tp");
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ((*split)->size(), 1);
  EXPECT_EQ((*split)->name(), "local");
}

}  // namespace
}  // namespace shardlm
