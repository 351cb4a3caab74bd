// shardlm-worker: one rank of a worker job. Launch the whole job with mpirun:
//   mpirun -np T*P shardlm-worker --coordinator HOST:PORT --worker-secret-file FILE
// Rank 0 dials the coordinator (WorkerControl.Attach), relays each command to every rank over
// MPI and sends back the results; every rank loads its shard and runs each step. The job ends
// when the coordinator says Shutdown or its stream ends (relaunch it to re-attach). Rank 0
// services the stream on a thread of its own (worker/coordinator_stream.h): keepalives are
// answered however long a step runs, and Abort ends the job at once, even mid-step.
#include <grpcpp/grpcpp.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/secret.h"
#include "base/status_macros.h"
#include "formats/checkpoint_loader.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"
#include "parallel/collectives.h"
#include "runtime/backend_setup.h"
#include "runtime/faulty_backend.h"
#include "parallel/mpi_communicator.h"
#include "shardlm/v1/worker.grpc.pb.h"
#include "spdlog/cfg/env.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "runtime/engine.h"
#include "runtime/step_deltas.h"
#include "worker/coordinator_stream.h"
#include "worker/pipeline.h"

namespace shardlm {
namespace {

using worker::v1::CoordinatorMessage;
using worker::v1::WorkerMessage;

// The KV cache of a CPU rank when the coordinator leaves the size to the workers.
constexpr uint64_t kDefaultCpuKvBytes = uint64_t{256} << 20;

struct Loaded {
  OpenedCheckpoint checkpoint;
  BackendSetup setup;
  std::unique_ptr<LlamaModel> model;
};

// Every rank: plan, shard, KV blocks. Returns this rank's status; blocks = what fits here.
absl::Status LoadShard(const worker::v1::LoadCommand& cmd, const BackendOptions& backend_options,
                       std::shared_ptr<Communicator> world, Loaded& out, int64_t& blocks) {
  SHARDLM_ASSIGN_OR_RETURN(out.checkpoint, OpenCheckpoint(cmd.model()));
  std::vector<int64_t> boundaries;
  if (!cmd.pp_layers().empty()) {
    SHARDLM_ASSIGN_OR_RETURN(boundaries, ParseLayerList(cmd.pp_layers()));
  }
  SHARDLM_ASSIGN_OR_RETURN(
      ShardPlan plan,
      MakeShardPlan(PlanInputFor(out.checkpoint.config, cmd.tp(), cmd.pp(), boundaries,
                                 out.checkpoint.weights.get(), std::max(cmd.ep(), 1))));
  SHARDLM_ASSIGN_OR_RETURN(ParallelContext ctx, ParallelContext::Create(plan, world));
  BackendOptions options = backend_options;
  if (cmd.threads() > 0) options.threads = cmd.threads();
  SHARDLM_ASSIGN_OR_RETURN(out.setup, SetUpBackend(options, ctx));
  SHARDLM_ASSIGN_OR_RETURN(out.model, LlamaModel::Load(out.checkpoint.config,
                                                       *out.checkpoint.weights, *out.setup.backend,
                                                       std::move(ctx)));
  const int bs = cmd.kv_block_size() > 0 ? cmd.kv_block_size() : 16;
  const uint64_t per_block = out.model->KvBytesPerBlock(bs);
  // The coordinator's --kv-cache-memory (0: auto); on a GPU, --gpu-memory-fraction of the device
  // less the weights and the activations of the largest step.
  uint64_t kv_bytes = cmd.kv_cache_bytes() > 0 ? cmd.kv_cache_bytes() : kDefaultCpuKvBytes;
  const ModelConfig& c = out.checkpoint.config;
  const RankShard& s = out.model->parallel().shard;
  const uint64_t step_tokens = std::max<uint64_t>(cmd.max_batch_tokens(), 256);
  const uint64_t reserve =
      step_tokens * sizeof(float) *
          (6 * static_cast<uint64_t>(c.hidden_size) +
           3 * static_cast<uint64_t>(s.intermediate.size()) +
           2 * static_cast<uint64_t>(s.vocab.size())) +
      (uint64_t{512} << 20);
  if (const std::optional<uint64_t> budget = KvCacheBudget(out.setup, options, reserve)) {
    kv_bytes = cmd.kv_cache_bytes() > 0 ? std::min<uint64_t>(cmd.kv_cache_bytes(), *budget) : *budget;
  }
  // One block more than reported: the padding rows of recorded decode steps write there.
  blocks = per_block == 0 ? 0 : static_cast<int64_t>(kv_bytes / per_block) - 1;
  if (blocks <= 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache budget of ", kv_bytes, " bytes holds no KV block of ", per_block,
        " bytes on this rank (", out.setup.description, ")"));
  }
  spdlog::info("rank {} (stage {}, tp rank {}): layers [{}, {}), q heads [{}, {}), kv heads [{}, {}){}: "
               "{:.2f} MiB of weights on {}, room for {} KV blocks of {} tokens ({:.1f} MiB)",
               s.rank, s.stage, s.tp_rank, s.layers.begin, s.layers.end, s.q_heads.begin,
               s.q_heads.end, s.kv_heads.begin, s.kv_heads.end,
               s.experts.empty() ? std::string()
                                 : fmt::format(", experts [{}, {})", s.experts.begin, s.experts.end),
               out.model->weight_bytes() / 1048576.0, out.setup.description, blocks, bs,
               static_cast<double>(blocks) * per_block / 1048576.0);
  return absl::OkStatus();
}

// What the backend throws while loading (device memory for the weights) becomes this rank's
// status, naming the op: the ranks then agree on it like on any other load error.
absl::Status Load(const worker::v1::LoadCommand& cmd, const BackendOptions& backend_options,
                  std::shared_ptr<Communicator> world, Loaded& out, int64_t& blocks) {
  try {
    return LoadShard(cmd, backend_options, std::move(world), out, blocks);
  } catch (const std::exception& e) {
    const std::string op = out.setup.backend ? FailedBackendOp(*out.setup.backend) : "";
    return absl::InternalError(absl::StrCat("loading failed", op.empty() ? "" : " in ", op, ": ",
                                            e.what()));
  }
}

// The KV cache and the step engine of a loaded rank. The cache's allocation may fail on one rank
// (device memory): every rank learns it before the engine's set-up, which is collective.
absl::Status StartEngine(const worker::v1::LoadCommand& cmd, const BackendOptions& backend_options,
                         Communicator& world, int64_t blocks, Loaded& loaded,
                         std::optional<WorkerEngine>& engine, double agreement_timeout_s) {
  const int block_size = cmd.kv_block_size() > 0 ? cmd.kv_block_size() : 16;
  std::optional<PagedKvCache> cache;
  absl::Status allocated;
  try {
    // `blocks` for the coordinator, and one more for padding (see LoadShard).
    cache = loaded.model->NewPagedCache(block_size, blocks + 1);
  } catch (const std::exception& e) {
    const std::string op = FailedBackendOp(*loaded.setup.backend);
    allocated = absl::ResourceExhaustedError(absl::StrCat("the KV cache of ", blocks + 1,
                                                          " blocks failed", op.empty() ? "" : " in ",
                                                          op, ": ", e.what()));
  }
  SHARDLM_RETURN_IF_ERROR(AgreeOnStatus(world, allocated));
  EngineOptions options;
  options.cuda_graphs = backend_options.cuda_graphs;
  options.pad_block = static_cast<int32_t>(blocks);
  options.agreement_timeout_s = agreement_timeout_s;
  engine.emplace(*loaded.model, std::move(*cache), options);
  if (engine->agreement() == nullptr) {
    return absl::InternalError("the step agreement could not be set up (see Step)");
  }
  return absl::OkStatus();
}

// Called on rank 0's stream thread (an Abort from the coordinator, or the coordinator lost while
// a step runs): ends every rank of the job now, wherever the main threads are (in a step, in a
// collective). MPI is initialised FUNNELED and this is not the main thread, which FUNNELED does
// not cover; Open MPI 4.1's MPI_Abort reports to the local daemon over PMIx (which has a progress
// thread of its own) and the runtime kills every rank: it needs nothing from the main thread,
// and tests/e2e/worker_abort_test.cpp checks that every rank ends. Should it ever return,
// exiting without MPI_Finalize makes mpirun end the job just the same.
[[noreturn]] void AbortJob(const std::string& why) {
  static_cast<void>(why);  // the stream has logged it
  static_cast<void>(MPI_Abort(MPI_COMM_WORLD, 1));
  std::_Exit(1);
}

int Run(const std::string& coordinator, const std::string& secret_file, int attach_timeout_s,
        const BackendOptions& backend_options, double agreement_timeout_s, double lost_grace_s) {
  auto session = MpiSession::Init(nullptr, nullptr);
  if (!session.ok()) {
    std::fprintf(stderr, "shardlm-worker: %s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  auto world_or = MpiCommunicator::World();
  if (!world_or.ok()) {
    std::fprintf(stderr, "shardlm-worker: %s\n", std::string(world_or.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<Communicator> world(std::move(*world_or));
  const MPI_Comm comm = static_cast<MpiCommunicator&>(*world).comm();
  const int rank = world->rank();
  SetCheckWorldRank(rank);

  // Rank 0: the stream to the coordinator.
  std::unique_ptr<CoordinatorStream> stream;
  // Only rank 0 needs the secret (the file may exist only where it runs).
  if (rank == 0) {
    std::string secret_warning;
    absl::StatusOr<std::string> secret =
        ReadSecretFile("--worker-secret-file", secret_file, &secret_warning);
    if (!secret_warning.empty()) spdlog::warn("{}", secret_warning);
    if (!secret.ok()) {
      spdlog::error("{}", std::string(secret.status().message()));
    } else {
      WorkerMessage hello;
      hello.mutable_hello()->set_world_size(world->size());
      char host[256] = {0};
      gethostname(host, sizeof(host) - 1);
      hello.mutable_hello()->set_hostname(host);
      hello.mutable_hello()->set_pid(static_cast<int>(getpid()));
      hello.mutable_hello()->set_secret(*secret);
      CoordinatorStream::Options options;
      options.address = coordinator;
      options.connect_timeout = std::chrono::seconds(attach_timeout_s);
      options.lost_grace = std::chrono::milliseconds(static_cast<int64_t>(lost_grace_s * 1000));
      absl::StatusOr<std::unique_ptr<CoordinatorStream>> opened =
          CoordinatorStream::Open(options, hello, AbortJob);
      if (opened.ok()) {
        stream = std::move(*opened);
      } else {
        spdlog::error("{}", std::string(opened.status().message()));
      }
    }
  }
  // The coordinator's plans are deltas: rank 0 expands them (its record of the sequences) before
  // any rank sees them.
  StepDeltas deltas;
  // Rank 0 takes the next command and relays it; an empty message means the stream ended.
  auto next = [&](CoordinatorMessage& msg) -> bool {
    std::string bytes;
    while (rank == 0 && stream) {
      std::optional<CoordinatorMessage> m = stream->Next();
      if (!m) break;
      if (m->has_step()) {
        absl::StatusOr<worker::v1::StepPlan> expanded = deltas.Expand(m->step());
        if (!expanded.ok()) {
          // Refused before any rank saw it: answered here, and no rank runs it.
          spdlog::error("step {} refused: {}", m->step().step_id(),
                        std::string(expanded.status().message()));
          WorkerMessage reply;
          reply.mutable_result()->set_step_id(m->step().step_id());
          reply.mutable_result()->set_error(std::string(expanded.status().message()));
          stream->Write(reply);
          continue;
        }
        *m->mutable_step() = std::move(*expanded);
      }
      bytes = m->SerializeAsString();
      break;
    }
    if (!BroadcastBytes(comm, rank, bytes).ok()) return false;
    return !bytes.empty() && msg.ParseFromString(bytes);
  };

  Loaded loaded;
  std::optional<WorkerEngine> engine;
  int code = rank == 0 && !stream ? 1 : 0;
  CoordinatorMessage msg;
  while (next(msg)) {
    if (msg.has_shutdown()) {
      spdlog::info("rank {}: shutdown requested by the coordinator", rank);
      break;
    }
    if (msg.has_load()) {
      int64_t blocks = 0;
      absl::Status status = Load(msg.load(), backend_options, world, loaded, blocks);
      if (!status.ok()) spdlog::error("rank {}: {}", rank, std::string(status.message()));
      // Agree on the outcome and on the blocks every rank can hold.
      std::vector<int64_t> all(world->size());
      const int64_t mine = status.ok() ? blocks : -1;
      absl::Status gathered = world->AllGather(&mine, all.data(), sizeof(int64_t));
      int64_t min_blocks = INT64_MAX;
      int failed = -1;
      for (int r = 0; r < world->size(); ++r) {
        if (all[r] < 0 && failed < 0) failed = r;
        min_blocks = std::min(min_blocks, all[r]);
      }
      std::string error;
      if (!gathered.ok()) {
        error = std::string(gathered.message());
      } else if (failed >= 0) {
        error = failed == 0 ? std::string(status.message())
                            : absl::StrCat("rank ", failed, " failed to load (see its log)");
      } else {
        absl::Status started = StartEngine(msg.load(), backend_options, *world, min_blocks,
                                           loaded, engine, agreement_timeout_s);
        if (!started.ok()) {
          // Aborted: another rank's failure, which that rank logs.
          if (!absl::IsAborted(started)) {
            spdlog::error("rank {}: {}", rank, std::string(started.message()));
          }
          error = std::string(started.message());
        }
      }
      if (rank == 0) {
        WorkerMessage reply;
        worker::v1::Loaded* l = reply.mutable_loaded();
        l->set_ok(error.empty());
        if (!error.empty()) {
          l->set_error(error);
        } else {
          l->set_kv_blocks(min_blocks);
          l->set_weight_bytes_rank0(loaded.model->weight_bytes());
        }
        stream->Write(reply);
      }
      if (!error.empty()) {
        code = 1;
        break;
      }
      continue;
    }
    if (msg.has_step()) {
      if (!engine) {
        spdlog::error("rank {}: a step before the model was loaded", rank);
        code = 1;
        break;
      }
      if (loaded.model->parallel().plan.pp > 1) {
        // From the first step on, the stages run steps one after the other (worker/pipeline.h).
        code = ServePipelined(*engine, comm, stream.get(), rank == 0 ? &deltas : nullptr,
                              msg.step());
        break;
      }
      const uint64_t step_id = msg.step().step_id();
      absl::StatusOr<worker::v1::StepResult> result = engine->Step(msg.step());
      if (!result.ok() && absl::IsAborted(result.status())) {
        // Every rank reached the step agreement and got this same message, and the job cannot
        // go on: rank 0 says so once (to its log and, for the step's requests, to the
        // coordinator), then every rank leaves with exit code 1.
        if (rank == 0) {
          spdlog::error("step {} failed: {}", step_id, std::string(result.status().message()));
          WorkerMessage reply;
          reply.mutable_result()->set_step_id(step_id);
          reply.mutable_result()->set_error(std::string(result.status().message()));
          stream->Write(reply);
        }
        code = 1;
        break;
      }
      if (!result.ok()) {
        // This rank failed and its peers did not all come to the agreement (they wait in a
        // collective it left), or the agreement itself failed: only MPI_Abort ends them.
        spdlog::error("rank {}: step {} failed: {}; aborting the job", rank, step_id,
                      std::string(result.status().message()));
        static_cast<void>(MPI_Abort(MPI_COMM_WORLD, 1));  // ends the job; does not return
      }
      if (rank == 0 && !result->error().empty()) {
        spdlog::error("step {} failed: {}; its requests end with the error, serving goes on",
                      step_id, result->error());
      }
      if (rank == 0) deltas.Record(msg.step(), *result);
      WorkerMessage reply;
      *reply.mutable_result() = std::move(*result);
      if (rank == 0 && !stream->Write(reply)) {
        spdlog::warn("the coordinator stream closed while writing step {}", msg.step().step_id());
      }
    }
  }
  if (rank == 0 && stream) {
    grpc::Status st = stream->Close();
    if (!st.ok()) {
      spdlog::error("coordinator ended the attach stream: {}: {}", static_cast<int>(st.error_code()),
                    st.error_message());
      code = 1;
    }
  }
  // Every rank leaves with rank 0's verdict.
  world->Broadcast(&code, sizeof(code), 0).IgnoreError();
  engine.reset();
  loaded = Loaded();
  world.reset();
  return code;
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) {
  shardlm::EnsureBlasKernelsMatchCpu(argv);  // may re-execute this process (cpu_backend.h)
  spdlog::set_default_logger(spdlog::stderr_color_mt("shardlm-worker"));
  // SPDLOG_LEVEL=debug: per-step detail, e.g. the tokens each expert got (load balance).
  spdlog::cfg::load_env_levels();
  spdlog::set_pattern("[%H:%M:%S.%e] [worker] [%^%l%$] %v");
  CLI::App app{"shardlm-worker: one rank of a worker job (launch with mpirun -np TP*PP)"};
  std::string coordinator;
  int attach_timeout_s = 60;
  app.add_option("--coordinator", coordinator, "The coordinator's address, HOST:PORT")->required();
  app.add_option("--attach-timeout", attach_timeout_s, "Seconds to wait for the coordinator")
      ->default_val(60);
  std::string secret_file;
  app.add_option("--worker-secret-file", secret_file,
                 "File holding the secret shared with the coordinator's --worker-secret-file "
                 "(required; read by rank 0)");
  double agreement_timeout_s = 30.0;
  app.add_option("--step-agreement-timeout", agreement_timeout_s,
                 "Seconds a rank whose step failed waits for the others to agree on it before it "
                 "ends the job (they are then blocked in a collective it left)")
      ->default_val(agreement_timeout_s)
      ->check(CLI::PositiveNumber);
  double lost_grace_s = 10.0;
  app.add_option("--coordinator-lost-grace", lost_grace_s,
                 "Seconds a step may go on after the coordinator stream ended before rank 0 ends "
                 "the job with MPI_Abort (no rank is left behind; an idle job exits normally)")
      ->default_val(lost_grace_s)
      ->check(CLI::PositiveNumber);
  shardlm::BackendOptions backend;
  shardlm::AddBackendOptions(app, backend);
  CLI11_PARSE(app, argc, argv);
  if (secret_file.empty()) {
    std::fprintf(stderr,
                 "shardlm-worker: error: --worker-secret-file is required (the file the "
                 "coordinator's --worker-secret-file names)\n");
    return 1;
  }
  return shardlm::Run(coordinator, secret_file, attach_timeout_s, backend, agreement_timeout_s,
                      lost_grace_s);
}
