#include "runtime/faulty_backend.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/check.h"

namespace shardlm {
namespace {

// Every op a fault may name, and those whose f32 output a nan fault can poison.
constexpr std::array<absl::string_view, 28> kOps = {
    "Allocate", "AllocateUninitialized", "ToDevice", "ToHost", "PrepareWeight",
    "PrepareWeightColumns", "Linear", "RmsNorm", "UploadIndices", "WriteIndices", "Copy",
    "AddRmsNorm", "Rope", "RopeWriteKv", "Embedding", "GluMul", "GluMulPacked", "Add",
    "ScatterAddRows", "Scale", "HeadRmsNorm", "Argmax", "Sample", "WriteKv", "PagedAttention", "BeginCapture", "EndCapture",
    "Synchronize"};
constexpr std::array<absl::string_view, 13> kNanOps = {
    "Linear", "RmsNorm", "AddRmsNorm", "Rope", "RopeWriteKv", "Embedding", "GluMul",
    "GluMulPacked", "Add", "ScatterAddRows", "Scale", "HeadRmsNorm", "PagedAttention"};

bool Contains(std::span<const absl::string_view> names, absl::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

std::string FaultSpec::ToString() const {
  std::string kind_text;
  switch (kind) {
    case Kind::kOutOfMemory:
      kind_text = "oom";
      break;
    case Kind::kNan:
      kind_text = "nan";
      break;
    case Kind::kSleep:
      kind_text = absl::StrCat("sleep=", sleep_s);
      break;
  }
  return absl::StrCat(op, ":", call, ":", rank < 0 ? "*" : absl::StrCat(rank), ":", kind_text);
}

absl::StatusOr<FaultSpec> ParseFaultSpec(absl::string_view text) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--inject-fault '", text, "': ", why, " (expected OP:N[:RANK][:oom|nan|sleep=SECONDS])"));
  };
  if (parts.size() < 2 || parts.size() > 4) return bad("wrong number of ':'-separated parts");
  FaultSpec spec;
  spec.op = std::string(parts[0]);
  if (!Contains(kOps, spec.op)) {
    return bad(absl::StrCat("unknown op '", spec.op, "'; the ops are ", absl::StrJoin(kOps, ", ")));
  }
  if (!absl::SimpleAtoi(parts[1], &spec.call) || spec.call < 1) {
    return bad(absl::StrCat("N must be a call number >= 1, got '", parts[1], "'"));
  }
  // Bounded, so that a typo (sleep=30000) cannot stall a drill for hours.
  constexpr double kMaxSleepS = 3600;
  for (size_t i = 2; i < parts.size(); ++i) {
    const absl::string_view p = parts[i];
    const bool is_sleep = absl::StartsWith(p, "sleep=");
    if (p == "oom" || p == "nan" || is_sleep) {
      if (i + 1 != parts.size()) return bad("the kind (oom, nan or sleep=S) comes last");
      if (is_sleep) {
        const absl::string_view seconds = p.substr(6);
        if (!absl::SimpleAtod(seconds, &spec.sleep_s) || !(spec.sleep_s > 0) ||
            spec.sleep_s > kMaxSleepS) {
          return bad(
              absl::StrCat("sleep needs seconds > 0 and <= ", kMaxSleepS, ", got '", seconds, "'"));
        }
        spec.kind = FaultSpec::Kind::kSleep;
      } else {
        spec.kind = p == "nan" ? FaultSpec::Kind::kNan : FaultSpec::Kind::kOutOfMemory;
      }
    } else if (i == 2 && p == "*") {
      spec.rank = -1;
    } else if (i == 2 && absl::SimpleAtoi(p, &spec.rank) && spec.rank >= 0) {
    } else {
      return bad(absl::StrCat("'", p, "' is neither a rank >= 0, '*', 'oom', 'nan' nor 'sleep=S'"));
    }
  }
  if (spec.kind == FaultSpec::Kind::kNan && !Contains(kNanOps, spec.op)) {
    return bad(absl::StrCat("nan needs an op with an f32 output: ", absl::StrJoin(kNanOps, ", ")));
  }
  return spec;
}

FaultyBackend::FaultyBackend(std::unique_ptr<Backend> inner, int rank,
                             std::optional<FaultSpec> fault)
    : owned_(std::move(inner)), inner_(*owned_), rank_(rank), fault_(std::move(fault)) {}

FaultyBackend::FaultyBackend(Backend& inner, int rank, std::optional<FaultSpec> fault)
    : inner_(inner), rank_(rank), fault_(std::move(fault)) {}

void FaultyBackend::Arm(FaultSpec fault) {
  fault_ = std::move(fault);
  calls_ = 0;
}

bool FaultyBackend::Due(const char* op) {
  if (!fault_ || fault_->op != op || (fault_->rank >= 0 && fault_->rank != rank_)) return false;
  return ++calls_ == fault_->call;
}

void FaultyBackend::WriteNanRow(Tensor& t) {
  if (t.rank() == 0 || t.dim(0) == 0 || t.dtype() != DType::kF32) return;
  Tensor row = t.Rows(0, 1);
  Tensor host = Tensor::Empty(row.shape(), DType::kF32);
  std::fill(host.data<float>(), host.data<float>() + host.numel(),
            std::numeric_limits<float>::quiet_NaN());
  // Through the real backend, so that the row lands in its memory (device or host).
  inner_.Copy(inner_.ToDevice(host), row);
}

template <class Body>
decltype(auto) FaultyBackend::Run(const char* op, Tensor* output, Body&& body) {
  try {
    const bool due = Due(op);
    if (due && fault_->kind == FaultSpec::Kind::kOutOfMemory) {
      // What the CUDA backend throws when its stream-ordered allocation finds no memory, marked
      // as injected so that a drill is not taken for the real thing.
      ThrowCheckFailure("CUDA", "cudaMallocAsync(&ptr, bytes, stream_)",
                        absl::StrCat(" (injected by --inject-fault ", fault_->ToString(), ")"),
                        "cudaErrorMemoryAllocation (out of memory)", __FILE__, __LINE__);
    }
    if (due && fault_->kind == FaultSpec::Kind::kSleep) {
      std::this_thread::sleep_for(std::chrono::duration<double>(fault_->sleep_s));
    }
    if constexpr (std::is_void_v<decltype(body())>) {
      body();
      if (due && fault_->kind == FaultSpec::Kind::kNan && output != nullptr) WriteNanRow(*output);
    } else {
      return body();
    }
  } catch (...) {
    failed_op_ = op;
    throw;
  }
}

Tensor FaultyBackend::Allocate(std::vector<int64_t> shape, DType dtype) {
  return Run("Allocate", nullptr, [&] { return inner_.Allocate(std::move(shape), dtype); });
}
Tensor FaultyBackend::AllocateUninitialized(std::vector<int64_t> shape, DType dtype) {
  return Run("AllocateUninitialized", nullptr,
             [&] { return inner_.AllocateUninitialized(std::move(shape), dtype); });
}
Tensor FaultyBackend::ToDevice(const Tensor& host) {
  return Run("ToDevice", nullptr, [&] { return inner_.ToDevice(host); });
}
Tensor FaultyBackend::ToHost(const Tensor& t) {
  return Run("ToHost", nullptr, [&] { return inner_.ToHost(t); });
}
Tensor FaultyBackend::PrepareWeight(const Tensor& host) {
  return Run("PrepareWeight", nullptr, [&] { return inner_.PrepareWeight(host); });
}
Tensor FaultyBackend::PrepareWeightColumns(const Tensor& host, int64_t begin, int64_t end) {
  return Run("PrepareWeightColumns", nullptr,
             [&] { return inner_.PrepareWeightColumns(host, begin, end); });
}
void FaultyBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  Run("Linear", &y, [&] { inner_.Linear(x, w, bias, y); });
}
void FaultyBackend::RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  Run("RmsNorm", &y, [&] { inner_.RmsNorm(x, w, eps, y); });
}
Tensor FaultyBackend::UploadIndices(std::span<const int32_t> host) {
  return Run("UploadIndices", nullptr, [&] { return inner_.UploadIndices(host); });
}
void FaultyBackend::WriteIndices(std::span<const int32_t> host, Tensor& dst) {
  Run("WriteIndices", nullptr, [&] { inner_.WriteIndices(host, dst); });
}
void FaultyBackend::Copy(const Tensor& src, Tensor& dst) {
  Run("Copy", nullptr, [&] { inner_.Copy(src, dst); });
}
void FaultyBackend::AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps,
                               Tensor& y) {
  Run("AddRmsNorm", &y, [&] { inner_.AddRmsNorm(x, delta, w, eps, y); });
}
void FaultyBackend::Rope(Tensor& x, const Tensor& positions, const RopeConfig& rope) {
  Run("Rope", &x, [&] { inner_.Rope(x, positions, rope); });
}
void FaultyBackend::RopeWriteKv(const Tensor& qkv, const Tensor& positions, const RopeConfig& rope,
                                const Tensor& rows, Tensor& k_cache, Tensor& v_cache, Tensor& q) {
  Run("RopeWriteKv", &q,
      [&] { inner_.RopeWriteKv(qkv, positions, rope, rows, k_cache, v_cache, q); });
}
void FaultyBackend::Embedding(const Tensor& table, const Tensor& ids, Tensor& y) {
  Run("Embedding", &y, [&] { inner_.Embedding(table, ids, y); });
}
void FaultyBackend::GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) {
  Run("GluMul", &y, [&] { inner_.GluMul(gate, up, act, y); });
}
void FaultyBackend::GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y) {
  Run("GluMulPacked", &y, [&] { inner_.GluMulPacked(gate_up, act, y); });
}
void FaultyBackend::Add(Tensor& x, const Tensor& y) {
  Run("Add", &x, [&] { inner_.Add(x, y); });
}
void FaultyBackend::ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                                   std::span<const float> weights, Tensor& dst) {
  Run("ScatterAddRows", &dst, [&] { inner_.ScatterAddRows(src, rows, weights, dst); });
}
void FaultyBackend::Scale(Tensor& x, float s) {
  Run("Scale", &x, [&] { inner_.Scale(x, s); });
}
void FaultyBackend::HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w,
                                const Tensor& k_w, float eps) {
  Run("HeadRmsNorm", &qkv, [&] { inner_.HeadRmsNorm(qkv, heads, kv_heads, q_w, k_w, eps); });
}
void FaultyBackend::Argmax(const Tensor& logits, std::span<int32_t> out,
                           std::span<float> values) {
  Run("Argmax", nullptr, [&] { inner_.Argmax(logits, out, values); });
}
void FaultyBackend::Sample(const Tensor& logits, std::span<const SampleRowParams> rows,
                           std::span<int32_t> out) {
  Run("Sample", nullptr, [&] { inner_.Sample(logits, rows, out); });
}
void FaultyBackend::WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows,
                            Tensor& k_cache, Tensor& v_cache) {
  Run("WriteKv", nullptr, [&] { inner_.WriteKv(k, v, rows, k_cache, v_cache); });
}
void FaultyBackend::PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                   const PagedKvIndices& layout, const AttentionParams& params,
                                   Tensor& out) {
  Run("PagedAttention", &out,
      [&] { inner_.PagedAttention(q, k_cache, v_cache, layout, params, out); });
}
bool FaultyBackend::BeginCapture() {
  return Run("BeginCapture", nullptr, [&] { return inner_.BeginCapture(); });
}
std::unique_ptr<BackendGraph> FaultyBackend::EndCapture() {
  return Run("EndCapture", nullptr, [&] { return inner_.EndCapture(); });
}
void FaultyBackend::Synchronize() {
  Run("Synchronize", nullptr, [&] { inner_.Synchronize(); });
}

std::string FailedBackendOp(const Backend& backend) {
  const auto* faulty = dynamic_cast<const FaultyBackend*>(&backend);
  return faulty != nullptr ? faulty->failed_op() : std::string();
}

void ClearFailedBackendOp(Backend& backend) {
  if (auto* faulty = dynamic_cast<FaultyBackend*>(&backend)) faulty->ClearFailedOp();
}

}  // namespace shardlm
