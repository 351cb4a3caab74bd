// The device sampler (kernels/cuda/cuda_sampling.h) against the CPU one (shardlm::Sample, no
// penalties) on random logits: the same token for every row, except where the CPU's choice sits
// within kNearTie (relative) of a boundary of its cumulative probabilities. The device sums the
// probabilities in fixed point and in parallel, the CPU in double and in order; the two sums
// part by 2e-9 of the total at most for 151936 tokens (about 1e-14 in practice). The test redoes
// the CPU's steps to measure that distance, and counts the near ties. Every test skips without
// a CUDA device.
#include "kernels/cuda/cuda_sampling.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/sampler.h"

namespace shardlm {
namespace {

using cuda::SampleRowParams;

// How close (relative) to a boundary of the CPU's cumulative sums a mismatch may be.
constexpr double kNearTie = 1e-8;
constexpr float kInf = std::numeric_limits<float>::infinity();

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

bool HasDevice() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the runtime's last error
    return false;
  }
  return count > 0;
}

// A device array of n T.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    if (n > 0) Check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (p_ != nullptr) cudaFree(p_);
  }
  T* get() const { return p_; }
  void Upload(const std::vector<T>& v) {
    Check(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    Check(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// A batch of rows with their CPU parameters and positions.
struct Batch {
  int64_t vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<SamplerParams> params;
  std::vector<uint64_t> positions;

  int64_t rows() const { return static_cast<int64_t>(params.size()); }
  std::vector<float> Row(int64_t r) const {
    return std::vector<float>(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
  }
  void Add(const std::vector<float>& row, const SamplerParams& p, uint64_t position) {
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back(p);
    positions.push_back(position);
  }
  std::vector<SampleRowParams> DeviceParams() const {
    std::vector<SampleRowParams> out;
    for (int64_t r = 0; r < rows(); ++r) {
      const SamplerParams& p = params[r];
      out.push_back({p.temperature, p.top_k, p.top_p, p.min_p, UniformAt(p.seed, positions[r])});
    }
    return out;
  }
};

// The device's tokens for every row of the batch, in one launch on a stream of its own.
std::vector<int32_t> RunDevice(const Batch& b) {
  DeviceArray<float> logits(b.logits.size());
  logits.Upload(b.logits);
  DeviceArray<SampleRowParams> params(b.params.size());
  params.Upload(b.DeviceParams());
  DeviceArray<int32_t> out(b.params.size());
  const size_t ws_bytes = cuda::SampleWorkspaceBytes(b.rows(), b.vocab);
  DeviceArray<unsigned char> ws(ws_bytes);
  cudaStream_t stream = nullptr;
  Check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cuda::LaunchSample(logits.get(), b.rows(), b.vocab, params.get(), out.get(), ws.get(), ws_bytes,
                     stream);
  Check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return out.Download();
}

// The CPU sampler's steps again (worker/sampler.cpp, no penalties), to see how near its choice
// came to a boundary: margin is the smallest relative distance of a deciding comparison (top-p
// reached, min-p floor, draw target against the cumulative sums) from equality.
struct CpuChoice {
  int32_t token = 0;
  double margin = std::numeric_limits<double>::infinity();
};

CpuChoice RedoCpu(const std::vector<float>& logits, const SamplerParams& p, uint64_t position) {
  CpuChoice c;
  auto near = [&c](double a, double b, double scale) {
    c.margin = std::min(c.margin, std::abs(a - b) / scale);
  };
  if (p.greedy()) {
    for (size_t i = 1; i < logits.size(); ++i) {
      if (logits[i] > logits[c.token]) c.token = static_cast<int32_t>(i);
    }
    return c;
  }
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  size_t keep = ids.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) {
    keep = static_cast<size_t>(p.top_k);
    std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), by_logit);
    ids.resize(keep);
  } else {
    std::sort(ids.begin(), ids.end(), by_logit);
  }
  const double inv_t = 1.0 / p.temperature;
  const double top = logits[ids[0]] * inv_t;
  std::vector<double> prob(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp(logits[ids[i]] * inv_t - top);
    total += prob[i];
  }
  size_t cut = keep;
  if (p.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i] / total;
      near(cum, p.top_p, 1.0);
      if (cum >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    const double floor = p.min_p * prob[0];
    size_t i = 1;
    while (i < cut && prob[i] >= floor) ++i;
    if (i < cut) near(prob[i], floor, floor);
    if (i > 1) near(prob[i - 1], floor, floor);
    cut = i;
  }
  double kept = 0;
  for (size_t i = 0; i < cut; ++i) kept += prob[i];
  const double target = UniformAt(p.seed, position) * kept;
  double cum = 0;
  c.token = ids[cut - 1];
  for (size_t i = 0; i < cut; ++i) {
    near(target, cum, kept);
    cum += prob[i];
    near(target, cum, kept);
    if (target < cum) {
      c.token = ids[i];
      break;
    }
  }
  return c;
}

// Compares the device with the CPU on every row of the batch; returns the near ties.
int CompareWithCpu(const Batch& b, const std::string& what) {
  const std::vector<int32_t> got = RunDevice(b);
  int near_ties = 0, near_mismatches = 0, failures = 0;
  for (int64_t r = 0; r < b.rows(); ++r) {
    const SamplerParams& p = b.params[r];
    std::vector<float> row = b.Row(r);
    const CpuChoice redo = RedoCpu(row, p, b.positions[r]);
    const int32_t want = Sample(row, p, TokenHistory{}, b.positions[r]).token;
    EXPECT_EQ(redo.token, want) << what << " row " << r << ": the test's copy of the CPU steps";
    const bool near_tie = redo.margin < kNearTie;
    near_ties += near_tie;
    if (got[r] == want) continue;
    if (near_tie) {
      ++near_mismatches;
    } else if (++failures <= 10) {
      ADD_FAILURE() << what << " row " << r << " (vocab " << b.vocab << ", temperature "
                    << p.temperature << ", top_k " << p.top_k << ", top_p " << p.top_p
                    << ", min_p " << p.min_p << ", seed " << p.seed << ", position "
                    << b.positions[r] << "): device " << got[r] << ", CPU " << want
                    << " (nearest boundary " << redo.margin << " away)";
    }
  }
  std::cout << "[          ] " << what << ": " << b.rows() << " rows, " << near_ties
            << " near ties (" << near_mismatches << " of them differ)\n";
  EXPECT_EQ(failures, 0) << what;
  return near_ties;
}

enum class Logits { kNormal, kPeaked, kMasked, kTied };

std::vector<float> RandomRow(int64_t vocab, Logits kind, std::mt19937& rng) {
  std::vector<float> row(static_cast<size_t>(vocab));
  std::normal_distribution<float> normal(0.0f, kind == Logits::kPeaked ? 3.0f : 1.0f);
  std::uniform_int_distribution<int64_t> any(0, vocab - 1);
  for (float& l : row) {
    l = normal(rng);
    // Multiples of 0.5 (many ties, -0 and +0 among them: the CPU ties them too).
    if (kind == Logits::kTied) l = std::round(l) * 0.5f;
  }
  if (kind == Logits::kPeaked) {
    for (int j = 0; j < 5; ++j) row[any(rng)] += 8.0f;
  }
  if (kind == Logits::kMasked) {
    for (float& l : row) {
      if (rng() % 4 == 0) l = -kInf;
    }
    row[any(rng)] = normal(rng);  // at least one token left
  }
  return row;
}

// Every combination of the sweep's parameters, `seeds` times, over logits of each kind.
Batch Sweep(int64_t vocab, const std::vector<Logits>& kinds, int seeds, std::mt19937& rng) {
  Batch b;
  b.vocab = vocab;
  for (Logits kind : kinds) {
    for (float temperature : {0.0f, 0.7f, 1.3f}) {
      for (int top_k : {0, 1, 40}) {
        for (float top_p : {1.0f, 0.9f, 0.5f}) {
          for (float min_p : {0.0f, 0.05f}) {
            for (int s = 0; s < seeds; ++s) {
              SamplerParams p;
              p.temperature = temperature;
              p.top_k = top_k;
              p.top_p = top_p;
              p.min_p = min_p;
              p.seed = (static_cast<uint64_t>(rng()) << 32) | rng();
              b.Add(RandomRow(vocab, kind, rng), p, rng() % 4096);
            }
          }
        }
      }
    }
  }
  return b;
}

class CudaSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasDevice()) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gives 0 or an error)";
  }

  // Sweeps `vocab` and checks that near ties stay rare (else the comparison says little).
  void SweepAndCompare(int64_t vocab, int seeds) {
    const Batch b = Sweep(vocab, {Logits::kNormal, Logits::kPeaked, Logits::kMasked}, seeds, rng_);
    const int near_ties = CompareWithCpu(b, "vocab " + std::to_string(vocab));
    EXPECT_LE(near_ties, b.rows() / 50) << "vocab " << vocab;
  }

  std::mt19937 rng_{20240611};
};

TEST_F(CudaSamplingTest, MatchesCpuSmallVocabularies) {
  for (int64_t vocab : {1, 2, 7, 1000}) SweepAndCompare(vocab, 2);
}

TEST_F(CudaSamplingTest, MatchesCpuVocab32000) { SweepAndCompare(32000, 6); }

TEST_F(CudaSamplingTest, MatchesCpuVocab151936) { SweepAndCompare(151936, 2); }

TEST_F(CudaSamplingTest, MatchesCpuLargestVocabularies) {
  for (int64_t vocab : {int64_t{262144}, cuda::kSampleMaxVocab}) {
    Batch b;
    b.vocab = vocab;
    const Logits kinds[] = {Logits::kNormal, Logits::kPeaked};
    for (int r = 0; r < 12; ++r) {
      SamplerParams p;
      p.temperature = r % 3 == 0 ? 0.7f : 1.3f;
      p.top_k = r % 4 == 1 ? 40 : 0;
      p.top_p = r % 2 == 0 ? 0.9f : 1.0f;
      p.min_p = r % 5 == 2 ? 0.05f : 0.0f;
      p.seed = rng_();
      b.Add(RandomRow(vocab, kinds[r % 2], rng_), p, r);
    }
    CompareWithCpu(b, "vocab " + std::to_string(vocab));
  }
}

// Logits with many ties (multiples of 0.5, -0 with +0): the CPU orders ties by id, and so must
// the cuts and the draw. Also rows where every logit is equal.
TEST_F(CudaSamplingTest, MatchesCpuWithTiedLogits) {
  for (int64_t vocab : {50, 32000}) {
    CompareWithCpu(Sweep(vocab, {Logits::kTied}, 3, rng_), "tied, vocab " + std::to_string(vocab));
  }
  Batch flat;
  flat.vocab = 1000;
  for (int top_k : {0, 1, 7, 40}) {
    for (float top_p : {1.0f, 0.5f, 0.1f}) {
      for (int s = 0; s < 4; ++s) {
        SamplerParams p;
        p.temperature = 0.9f;
        p.top_k = top_k;
        p.top_p = top_p;
        p.min_p = s % 2 == 0 ? 0.0f : 0.05f;
        p.seed = rng_();
        flat.Add(std::vector<float>(1000, s == 3 ? -0.0f : 1.25f), p, s);
      }
    }
  }
  CompareWithCpu(flat, "all equal");
}

// Greedy rows are the CPU's argmax exactly: the first maximum, NaN skipped unless at index 0.
TEST_F(CudaSamplingTest, GreedyIsCpuArgmax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Batch b;
  b.vocab = 6;
  const std::vector<std::vector<float>> rows = {
      {1, 3, 3, 2, 0, 3},          {-kInf, -kInf, -kInf, -kInf, -kInf, -kInf},
      {nan, 5, 1, 2, 3, 4},        {1, nan, 5, nan, 5, 0},
      {-0.0f, 0.0f, -1, -2, -3, -4}, {1, 2, kInf, 3, kInf, 0},
  };
  for (const auto& row : rows) {
    for (float temperature : {0.0f, 0.8f}) {
      SamplerParams p;
      p.temperature = temperature;
      p.top_k = temperature == 0.0f ? 0 : 1;
      b.Add(row, p, 0);
    }
  }
  const std::vector<int32_t> got = RunDevice(b);
  for (int64_t r = 0; r < b.rows(); ++r) {
    std::vector<float> row = b.Row(r);
    EXPECT_EQ(got[r], Sample(row, b.params[r], TokenHistory{}, 0).token) << "row " << r;
  }
}

// A row's token depends on its logits and parameters alone: the same alone as in a batch, and
// the same on every run (the sums are integers, whatever the order of the atomic adds).
TEST_F(CudaSamplingTest, RowsAreIndependentAndRunsRepeat) {
  const Batch b = Sweep(4096, {Logits::kNormal, Logits::kPeaked}, 1, rng_);
  const std::vector<int32_t> first = RunDevice(b);
  EXPECT_EQ(RunDevice(b), first);
  for (int64_t r = 0; r < b.rows(); r += 7) {
    Batch one;
    one.vocab = b.vocab;
    one.Add(b.Row(r), b.params[r], b.positions[r]);
    EXPECT_EQ(RunDevice(one)[0], first[r]) << "row " << r;
  }
}

// LaunchSample is stream-ordered and allocation-free: it can be captured in a CUDA graph and the
// graph replayed with new parameters in place.
TEST_F(CudaSamplingTest, CapturesInGraph) {
  Batch b = Sweep(32000, {Logits::kPeaked}, 1, rng_);
  const int64_t rows = b.rows();
  DeviceArray<float> logits(b.logits.size());
  logits.Upload(b.logits);
  DeviceArray<SampleRowParams> params(static_cast<size_t>(rows));
  params.Upload(b.DeviceParams());
  DeviceArray<int32_t> out(static_cast<size_t>(rows));
  const size_t ws_bytes = cuda::SampleWorkspaceBytes(rows, b.vocab);
  DeviceArray<unsigned char> ws(ws_bytes);
  // The uploads run on the legacy stream, which a non-blocking stream does not wait for.
  Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  cudaStream_t stream = nullptr;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  cuda::LaunchSample(logits.get(), rows, b.vocab, params.get(), out.get(), ws.get(), ws_bytes,
                     stream);
  cudaGraph_t graph = nullptr;
  Check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  Check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");

  for (int replay = 0; replay < 2; ++replay) {
    if (replay == 1) {
      for (SamplerParams& p : b.params) p.seed += 1;
      params.Upload(b.DeviceParams());
      Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    }
    Check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    Check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    EXPECT_EQ(out.Download(), RunDevice(b)) << "replay " << replay;
  }
  Check(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
  Check(cudaGraphDestroy(graph), "cudaGraphDestroy");
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

TEST_F(CudaSamplingTest, RejectsBadSizes) {
  DeviceArray<float> logits(16);
  DeviceArray<SampleRowParams> params(1);
  DeviceArray<int32_t> out(1);
  // No rows: nothing to do, nothing checked.
  EXPECT_NO_THROW(cuda::LaunchSample(nullptr, 0, 0, nullptr, nullptr, nullptr, 0, nullptr));
  EXPECT_THROW(cuda::LaunchSample(logits.get(), 1, 0, params.get(), out.get(), nullptr, 0,
                                  nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::LaunchSample(logits.get(), 1, cuda::kSampleMaxVocab + 1, params.get(),
                                  out.get(), nullptr, 0, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::LaunchSample(logits.get(), -1, 16, params.get(), out.get(), nullptr, 0,
                                  nullptr),
               std::invalid_argument);
  Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace
}  // namespace shardlm
