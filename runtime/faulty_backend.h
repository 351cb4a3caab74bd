// A Backend decorator between the model and a rank's real backend (SetUpBackend installs it):
//   - it names the op a failure came out of: when an exception leaves an op (device out of
//     memory, a failed launch, a shape error), the op's name is kept for the step engine's report
//     ("rank 1: step 42 failed in Linear: ..."), and the exception goes on unchanged;
//   - for tests and failure drills (`--inject-fault OP:N[:RANK][:KIND]`), the Nth call of a named
//     op fails the way the real backend would: it throws shardlm::CheckFailure with the message
//     of a device out of memory, or (KIND nan) it runs and then writes NaN into the first row of
//     its output, so that the step engine's guard on non-finite logits sees it; or (KIND sleep=S)
//     it sleeps S seconds and then runs normally: a step that takes long but is healthy, to
//     drill liveness and step deadlines.
// Without a fault it costs one virtual call per op.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"

namespace shardlm {

struct FaultSpec {
  enum class Kind { kOutOfMemory, kNan, kSleep };
  std::string op;      // a Backend op: "Linear", "Embedding", ...
  int64_t call = 1;    // the call of `op` that fails, counting from 1 once the fault is armed
  int rank = -1;       // the world rank that fails; -1: every rank
  Kind kind = Kind::kOutOfMemory;
  double sleep_s = 0;  // kSleep: how long the op sleeps before it runs

  std::string ToString() const;  // "Linear:5:1:oom", "Linear:5:*:sleep=30"
};

// "OP:N[:RANK][:KIND]" with KIND oom (the default), nan or sleep=S (0 < S <= 3600 seconds,
// fractions allowed); RANK may be left out or "*" (every rank). InvalidArgument naming the part
// that is wrong: an unknown op (the message lists them), N < 1, a bad rank, an unknown kind, a
// bad sleep time, or nan on an op without an f32 output.
absl::StatusOr<FaultSpec> ParseFaultSpec(absl::string_view text);

class FaultyBackend final : public Backend {
 public:
  // `rank`: this process's world rank (faults with another rank never fire here).
  FaultyBackend(std::unique_ptr<Backend> inner, int rank, std::optional<FaultSpec> fault = {});
  // Not owning: `inner` must outlive this object.
  FaultyBackend(Backend& inner, int rank, std::optional<FaultSpec> fault = {});

  // Arms `fault` from now on (its count starts again); replaces any earlier fault.
  void Arm(FaultSpec fault);
  // The op the last exception left since ClearFailedOp ("" when none).
  std::string failed_op() const { return failed_op_ != nullptr ? failed_op_ : ""; }
  void ClearFailedOp() { failed_op_ = nullptr; }

  std::string_view name() const override { return inner_.name(); }
  // (Default arguments as in Backend, for calls through this type.)
  Tensor Allocate(std::vector<int64_t> shape, DType dtype = DType::kF32) override;
  Tensor AllocateUninitialized(std::vector<int64_t> shape, DType dtype = DType::kF32) override;
  Tensor ToDevice(const Tensor& host) override;
  Tensor ToHost(const Tensor& t) override;
  Tensor PrepareWeight(const Tensor& host) override;
  Tensor PrepareWeightColumns(const Tensor& host, int64_t begin, int64_t end) override;
  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override;
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override;
  Tensor UploadIndices(std::span<const int32_t> host) override;
  void WriteIndices(std::span<const int32_t> host, Tensor& dst) override;
  void Copy(const Tensor& src, Tensor& dst) override;
  void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps,
                  Tensor& y) override;
  void Rope(Tensor& x, const Tensor& positions, const RopeConfig& rope) override;
  void RopeWriteKv(const Tensor& qkv, const Tensor& positions, const RopeConfig& rope,
                   const Tensor& rows, Tensor& k_cache, Tensor& v_cache, Tensor& q) override;
  void Embedding(const Tensor& table, const Tensor& ids, Tensor& y) override;
  void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) override;
  void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y) override;
  void Add(Tensor& x, const Tensor& y) override;
  void ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                      std::span<const float> weights, Tensor& dst) override;
  void Scale(Tensor& x, float s) override;
  void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w, const Tensor& k_w,
                   float eps) override;
  void Argmax(const Tensor& logits, std::span<int32_t> out,
              std::span<float> values = {}) override;
  void Sample(const Tensor& logits, std::span<const SampleRowParams> rows,
              std::span<int32_t> out) override;
  DType kv_cache_dtype() const override { return inner_.kv_cache_dtype(); }
  void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& k_cache,
               Tensor& v_cache) override;
  void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const PagedKvIndices& layout, const AttentionParams& params,
                      Tensor& out) override;
  bool supports_graphs() const override { return inner_.supports_graphs(); }
  bool BeginCapture() override;
  std::unique_ptr<BackendGraph> EndCapture() override;
  // Never fails (not an op a fault may name): the way back from a failed recording.
  void AbortCapture() noexcept override { inner_.AbortCapture(); }
  void Synchronize() override;

  // The host-span conveniences of Backend, hidden by the overrides above otherwise.
  using Backend::Embedding;
  using Backend::PagedAttention;
  using Backend::Rope;
  using Backend::RopeWriteKv;
  using Backend::WriteKv;

 private:
  // Runs `body` as op `op`: counts the call against an armed fault (throwing when it is due),
  // and keeps the op's name when an exception leaves it. `output`: what a nan fault poisons.
  template <class Body>
  decltype(auto) Run(const char* op, Tensor* output, Body&& body);
  // Whether the armed fault fires at this call of `op` (counts it).
  bool Due(const char* op);
  void WriteNanRow(Tensor& t);

  std::unique_ptr<Backend> owned_;
  Backend& inner_;
  const int rank_;
  std::optional<FaultSpec> fault_;
  int64_t calls_ = 0;  // calls of fault_->op since it was armed
  // A literal: recording it allocates nothing, even when the failure was std::bad_alloc.
  const char* failed_op_ = nullptr;
};

// The op `backend` (a FaultyBackend) saw the last exception leave since its ClearFailedOp; ""
// when there is none or `backend` is another kind.
std::string FailedBackendOp(const Backend& backend);
void ClearFailedBackendOp(Backend& backend);

}  // namespace shardlm
