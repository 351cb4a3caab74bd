#include "parallel/communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace shardlm {
namespace {

// A group of one rank: every collective is the identity, there is no peer to talk to.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }

  absl::Status AllReduceSum(float* data, size_t count) override { return absl::OkStatus(); }

  absl::Status AllGather(const void* in, void* out, size_t bytes) override {
    // memmove: the caller may gather in place into a buffer that overlaps `in`.
    if (in != out && bytes > 0) std::memmove(out, in, bytes);
    return absl::OkStatus();
  }

  absl::Status AllToAllV(const void* in, std::span<const size_t> send_bytes, void* out,
                         std::span<const size_t> recv_bytes) override {
    if (send_bytes.size() != 1 || recv_bytes.size() != 1 || send_bytes[0] != recv_bytes[0]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AllToAllV on the local communicator: expected one send and one receive count, equal; "
          "got ", send_bytes.size(), " and ", recv_bytes.size(), " counts (",
          send_bytes.empty() ? 0 : send_bytes[0], " vs ", recv_bytes.empty() ? 0 : recv_bytes[0],
          " bytes)"));
    }
    if (send_bytes[0] > 0) std::memcpy(out, in, send_bytes[0]);
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (root != 0) return BadRank("Broadcast", root);
    return absl::OkStatus();
  }

  absl::Status Send(const void* data, size_t bytes, int peer, int tag) override {
    return NoPeer("Send", peer);
  }
  absl::Status Recv(void* data, size_t bytes, int peer, int tag) override {
    return NoPeer("Recv", peer);
  }

  absl::Status Barrier() override { return absl::OkStatus(); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      const std::string& label) override {
    return CreateLocalCommunicator();
  }

 private:
  static absl::Status NoPeer(const char* op, int peer) {
    return absl::FailedPreconditionError(
        absl::StrCat(op, " to/from rank ", peer, " on the local communicator: a group of one "
                     "rank has no peer"));
  }
  static absl::Status BadRank(const char* op, int root) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on the local communicator: root ", root, " is not rank 0"));
  }
};

}  // namespace

std::unique_ptr<Communicator> CreateLocalCommunicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace shardlm
