// `shardlm info --server ADDR [--wait-ready SECONDS]`: the coordinator's ModelInfo as one JSON
// line. With --wait-ready it first polls until every worker rank is attached and loaded
// (workers_attached == workers_expected > 0), retrying while the server is not up yet; scripts use
// it to wait for a freshly started coordinator + workers.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "cli/client_common.h"
#include "cli/commands.h"

namespace shardlm::cli {

namespace {

struct InfoArgs {
  std::string server;
  double wait_ready_s = 0;
  ClientSecurityFlags security;
};

int RunInfo(const InfoArgs& args) {
  auto channel = MakeChannel(args.server, args.security);
  if (!channel.ok()) return Fail("info", std::string(channel.status().message()));
  auto stub = shardlm::v1::Generation::NewStub(*channel);
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(args.wait_ready_s));
  shardlm::v1::ModelInfo info;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    info.Clear();
    grpc::Status status = stub->GetModelInfo(&context, {}, &info);
    const bool ready = status.ok() && info.workers_expected() > 0 &&
                       info.workers_attached() == info.workers_expected();
    if (args.wait_ready_s <= 0) {
      if (!status.ok()) return FailRpc("info", status);
      break;
    }
    if (ready) break;
    if (Clock::now() >= give_up) {
      if (!status.ok()) return FailRpc("info", status);
      return Fail("info", absl::StrCat("not ready after ", args.wait_ready_s, " s: ",
                                       info.workers_attached(), " of ",
                                       info.workers_expected(), " worker ranks attached"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(info, &json, options).ok()) {
    return Fail("info", "cannot print ModelInfo as JSON");
  }
  std::printf("%s\n", json.c_str());
  return 0;
}

}  // namespace

RunFn AddInfoCommand(CLI::App& app) {
  auto args = std::make_shared<InfoArgs>();
  app.add_option("--server", args->server, "Coordinator address HOST:PORT")->required();
  app.add_option("--wait-ready", args->wait_ready_s,
                 "Wait up to SECONDS until every worker rank is attached and loaded")
      ->default_val(0);
  AddClientSecurityOptions(app, args->security);
  return [args]() -> int { return RunInfo(*args); };
}

}  // namespace shardlm::cli
