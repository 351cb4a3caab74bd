// NcclCommunicator on device buffers, bootstrapped over MPI. Registered under mpirun with one
// rank (one GPU: NCCL refuses two ranks on one device); written for any number of ranks, one GPU
// each (device = local rank % device count). Without a CUDA device every test is skipped, except
// NcclCommunicatorErrorTest.*; NcclCommunicatorFailureTest.* (a peer that stops calling
// collectives) needs exactly two ranks on two devices.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/communicator.h"
#include "base/env.h"
#include "parallel/nccl_communicator.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)
#define ASSERT_CUDA(expr)                                                   \
  do {                                                                      \
    const cudaError_t err_ = (expr);                                        \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

// A device buffer of T, freed on scope exit.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)) != cudaSuccess) p_ = nullptr;
  }
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  cudaError_t Upload(const std::vector<T>& v) {
    return cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  cudaError_t Download(std::vector<T>* v) const {
    v->resize(n_);
    return cudaMemcpy(v->data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

uint8_t Pattern(int rank, size_t i) { return static_cast<uint8_t>(rank * 37 + i * 11 + 5); }
std::vector<uint8_t> Bytes(int rank, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Pattern(rank, i);
  return v;
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  // One communicator for the whole suite (ncclCommInitRank takes a while).
  static void SetUpTestSuite() {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      skip_reason_ = "no CUDA device (cudaGetDeviceCount: " +
                     std::string(err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") +
                     ")";
      std::printf("NcclCommunicatorTest: %s, skipping\n", skip_reason_.c_str());
      return;
    }
    if (count < mpitest::World().size()) {
      skip_reason_ = std::to_string(count) + " CUDA device(s) for " +
                     std::to_string(mpitest::World().size()) +
                     " ranks (NCCL needs one device per rank)";
      std::printf("NcclCommunicatorTest: %s, skipping\n", skip_reason_.c_str());
      return;
    }
    const int device = NodeLocalRank() % count;
    absl::StatusOr<std::unique_ptr<Communicator>> comm =
        NcclCommunicator::Create(mpitest::World(), device);
    if (!comm.ok()) {
      create_error_ = comm.status().ToString();
      return;
    }
    comm_ = comm->release();
  }
  static void TearDownTestSuite() {
    delete comm_;
    comm_ = nullptr;
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_EQ(create_error_, "") << "NcclCommunicator::Create failed";
    ASSERT_NE(comm_, nullptr);
  }

  static Communicator& comm() { return *comm_; }

  static inline Communicator* comm_ = nullptr;
  static inline std::string skip_reason_;   // set when there is no device
  static inline std::string create_error_;  // set when NcclCommunicator::Create failed
};

TEST_F(NcclCommunicatorTest, Identity) {
  EXPECT_EQ(comm().rank(), mpitest::World().rank());
  EXPECT_EQ(comm().size(), mpitest::World().size());
  EXPECT_EQ(comm().name(), "nccl world");
}

TEST_F(NcclCommunicatorTest, AllReduceSum) {
  const int n = comm().size();
  const size_t count = 1000003;
  std::vector<float> host(count);
  for (size_t i = 0; i < count; ++i) host[i] = static_cast<float>(comm().rank() + 1 + i % 5);
  DeviceBuffer<float> data(count);
  ASSERT_NE(data.get(), nullptr);
  ASSERT_CUDA(data.Upload(host));
  ASSERT_OK(comm().AllReduceSum(data.get(), count));
  ASSERT_CUDA(data.Download(&host));
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) {
    const float want = static_cast<float>(n * (n + 1) / 2 + n * (i % 5));
    if (host[i] != want && wrong++ < 5) {
      ADD_FAILURE() << "data[" << i << "] = " << host[i] << ", want " << want;
    }
  }
  EXPECT_EQ(wrong, 0u);
}

TEST_F(NcclCommunicatorTest, AllGather) {
  const int n = comm().size();
  const size_t bytes = 4099;
  DeviceBuffer<uint8_t> in(bytes);
  DeviceBuffer<uint8_t> out(n * bytes);
  ASSERT_NE(in.get(), nullptr);
  ASSERT_NE(out.get(), nullptr);
  ASSERT_CUDA(in.Upload(Bytes(comm().rank(), bytes)));
  ASSERT_OK(comm().AllGather(in.get(), out.get(), bytes));
  std::vector<uint8_t> host;
  ASSERT_CUDA(out.Download(&host));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(std::vector<uint8_t>(host.begin() + r * bytes, host.begin() + (r + 1) * bytes),
              Bytes(r, bytes))
        << "piece of rank " << r;
  }
}

TEST_F(NcclCommunicatorTest, BroadcastFromEachRoot) {
  const size_t bytes = 100003;
  DeviceBuffer<uint8_t> data(bytes);
  ASSERT_NE(data.get(), nullptr);
  for (int root = 0; root < comm().size(); ++root) {
    ASSERT_CUDA(data.Upload(comm().rank() == root ? Bytes(root, bytes)
                                                  : std::vector<uint8_t>(bytes, 0)));
    ASSERT_OK(comm().Broadcast(data.get(), bytes, root));
    std::vector<uint8_t> host;
    ASSERT_CUDA(data.Download(&host));
    EXPECT_EQ(host, Bytes(root, bytes)) << "root " << root;
  }
}

TEST_F(NcclCommunicatorTest, SendRecvRing) {
  const int n = comm().size();
  // Left out of the np 1 entry by its --gtest_filter (tests/parallel/CMakeLists.txt).
  if (n < 2) GTEST_SKIP() << "one rank: nothing to send";
  const int me = comm().rank();
  const int next = (me + 1) % n;
  const int prev = (me + n - 1) % n;
  const size_t bytes = 1 << 20;
  DeviceBuffer<uint8_t> mine(bytes);
  DeviceBuffer<uint8_t> got(bytes);
  ASSERT_CUDA(mine.Upload(Bytes(me, bytes)));
  if (me == 0) {
    ASSERT_OK(comm().Send(mine.get(), bytes, next));
    ASSERT_OK(comm().Recv(got.get(), bytes, prev));
  } else {
    ASSERT_OK(comm().Recv(got.get(), bytes, prev));
    ASSERT_OK(comm().Send(mine.get(), bytes, next));
  }
  std::vector<uint8_t> host;
  ASSERT_CUDA(got.Download(&host));
  EXPECT_EQ(host, Bytes(prev, bytes));
}

TEST_F(NcclCommunicatorTest, AllToAllV) {
  // Uneven pieces, some empty, and one to itself: rank s sends 29 bytes to itself and
  // ((7s + 3d) % 5) * 13 bytes to d != s, of pattern 16s + d.
  const int n = comm().size(), me = comm().rank();
  auto piece_bytes = [](int from, int to) {
    return from == to ? size_t{29} : static_cast<size_t>((from * 7 + to * 3) % 5) * 13;
  };
  std::vector<size_t> send(n), recv(n);
  std::vector<uint8_t> in, want;
  for (int p = 0; p < n; ++p) {
    send[p] = piece_bytes(me, p);
    recv[p] = piece_bytes(p, me);
    const std::vector<uint8_t> out_piece = Bytes(me * 16 + p, send[p]);
    in.insert(in.end(), out_piece.begin(), out_piece.end());
    const std::vector<uint8_t> in_piece = Bytes(p * 16 + me, recv[p]);
    want.insert(want.end(), in_piece.begin(), in_piece.end());
  }
  DeviceBuffer<uint8_t> din(std::max<size_t>(in.size(), 1));
  DeviceBuffer<uint8_t> dout(std::max<size_t>(want.size(), 1));
  if (!in.empty()) ASSERT_CUDA(din.Upload(in));
  ASSERT_OK(comm().AllToAllV(din.get(), send, dout.get(), recv));
  std::vector<uint8_t> host;
  ASSERT_CUDA(dout.Download(&host));
  host.resize(want.size());
  EXPECT_EQ(host, want);
}

TEST_F(NcclCommunicatorTest, BarrierAndSplit) {
  ASSERT_OK(comm().Barrier());
  const int me = comm().rank();
  absl::StatusOr<std::unique_ptr<Communicator>> group = comm().Split(me % 2, me, "tp");
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->rank(), me / 2);
  EXPECT_EQ((*group)->name(), "nccl tp(color " + std::to_string(me % 2) + ")");
  DeviceBuffer<float> x(1);
  ASSERT_CUDA(x.Upload({static_cast<float>(me)}));
  ASSERT_OK((*group)->AllReduceSum(x.get(), 1));
  std::vector<float> host;
  ASSERT_CUDA(x.Download(&host));
  float want = 0;
  for (int r = me % 2; r < comm().size(); r += 2) want += static_cast<float>(r);
  EXPECT_EQ(host[0], want);
  ASSERT_OK((*group)->Barrier());
#else
  EXPECT_EQ(group.status().code(), absl::StatusCode::kUnimplemented) << group.status();
#endif
}

// Runs with or without a GPU: a device that does not exist is an error Status on every rank
// (they agree on it before ncclCommInitRank, so nobody waits there), naming the call and group.
TEST(NcclCommunicatorErrorTest, MissingDeviceIsAStatus) {
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      NcclCommunicator::Create(mpitest::World(), /*device=*/9999);
  ASSERT_FALSE(comm.ok());
  if (mpitest::World().size() == 1) {
    EXPECT_NE(comm.status().message().find("cudaSetDevice(device) on nccl world (rank 0 of 1)"),
              std::string::npos)
        << comm.status();
    EXPECT_NE(comm.status().message().find("nccl_communicator.cpp:"), std::string::npos)
        << comm.status();
  }
}

// The timeout of every wait: SHARDLM_NCCL_TIMEOUT_S seconds when it is a positive integer, else
// 300 s. Runs without a GPU.
TEST(NcclCommunicatorErrorTest, TimeoutFromTheEnvironment) {
  const char* old = std::getenv("SHARDLM_NCCL_TIMEOUT_S");
  const std::optional<std::string> saved = old != nullptr ? std::optional<std::string>(old)
                                                          : std::nullopt;
  ::unsetenv("SHARDLM_NCCL_TIMEOUT_S");
  EXPECT_EQ(NcclCommunicator::DefaultTimeout(), std::chrono::seconds(300));
  ::setenv("SHARDLM_NCCL_TIMEOUT_S", "7", 1);
  EXPECT_EQ(NcclCommunicator::DefaultTimeout(), std::chrono::seconds(7));
  for (const char* bad : {"0", "-3", "ten", ""}) {
    ::setenv("SHARDLM_NCCL_TIMEOUT_S", bad, 1);
    EXPECT_EQ(NcclCommunicator::DefaultTimeout(), std::chrono::seconds(300)) << "'" << bad << "'";
  }
  if (saved) {
    ::setenv("SHARDLM_NCCL_TIMEOUT_S", saved->c_str(), 1);
  } else {
    ::unsetenv("SHARDLM_NCCL_TIMEOUT_S");
  }
}

// A peer that stops calling collectives (a rank that hangs, or died) must end in an error on the
// ranks waiting for it, not in a hang: rank 1 skips a collective that rank 0 waits in. Once on a
// synchronous communicator (an all-reduce), once on a stream-ordered one (set_synchronous(false))
// through Barrier, which must wait in both modes. Rank 0 gets Unavailable after its timeout,
// naming the operation and the peers, and the aborted communicator refuses later calls. Needs
// exactly two ranks on two devices.
TEST(NcclCommunicatorFailureTest, StoppedPeerEndsInAnErrorNotAHang) {
  if (mpitest::World().size() != 2) GTEST_SKIP() << "needs exactly 2 ranks";
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    static_cast<void>(cudaGetLastError());
    GTEST_SKIP() << count << " CUDA device(s): a dead NCCL peer needs two";
  }
  constexpr auto kTimeout = std::chrono::seconds(3);
  const int me = mpitest::World().rank();
  for (const bool synchronous : {true, false}) {
    SCOPED_TRACE(synchronous ? "synchronous all-reduce" : "stream-ordered barrier");
    absl::StatusOr<std::unique_ptr<Communicator>> comm =
        NcclCommunicator::Create(mpitest::World(), NodeLocalRank() % count, nullptr, kTimeout);
    ASSERT_TRUE(comm.ok()) << comm.status();
    static_cast<NcclCommunicator&>(**comm).set_synchronous(synchronous);
    DeviceBuffer<float> x(1024);
    ASSERT_NE(x.get(), nullptr);
    ASSERT_CUDA(x.Upload(std::vector<float>(1024, 1.0f)));
    // Both ranks first: the connections are up, so only the peer's absence can fail below.
    ASSERT_OK((*comm)->AllReduceSum(x.get(), 1024));
    ASSERT_OK((*comm)->Barrier());
    if (me == 0) {
      const auto start = std::chrono::steady_clock::now();
      const absl::Status s =
          synchronous ? (*comm)->AllReduceSum(x.get(), 1024) : (*comm)->Barrier();
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
      const std::string op = synchronous ? "ncclAllReduce" : "barrier";
      EXPECT_NE(s.message().find(op), std::string::npos) << s;
      EXPECT_NE(s.message().find("1 other rank(s)"), std::string::npos) << s;
      EXPECT_NE(s.message().find("SHARDLM_NCCL_TIMEOUT_S"), std::string::npos) << s;
      EXPECT_GE(waited, 2.9) << "returned before its timeout: not a wait for the peer";
      EXPECT_LT(waited, 30.0) << "the timeout was not kept";
      const absl::Status later = (*comm)->AllReduceSum(x.get(), 1024);
      EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition) << later;
    }
    // Rank 1 made no call; both meet again over MPI before the communicators go.
    ASSERT_OK(mpitest::World().Barrier());
  }
}

}  // namespace
}  // namespace shardlm
