// Bytes no protobuf client library sends: a body that is not protobuf, and a GenerateRequest /
// TokenizeRequest with invalid UTF-8 in a string field, sent raw through grpc::GenericStub. gRPC's
// deserializer refuses them before the service sees them (INTERNAL; README "API" says why this is
// not INVALID_ARGUMENT), and the server keeps answering.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "coordinator/server.h"
#include "gtest/gtest.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/coordinator/fake_worker.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;

void* Tag(intptr_t i) { return reinterpret_cast<void*>(i); }

// One call of `method` with `body` as its only request message; its status, and how many response
// messages came.
grpc::Status RawCall(grpc::GenericStub& stub, const std::string& method, const std::string& body,
                     int* responses) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  grpc::CompletionQueue cq;
  void* tag = nullptr;
  bool ok = false;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call = stub.PrepareCall(&ctx, method, &cq);
  call->StartCall(Tag(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(body);
  grpc::ByteBuffer request(&slice, 1);
  call->WriteLast(request, grpc::WriteOptions(), Tag(2));
  cq.Next(&tag, &ok);
  *responses = 0;
  while (true) {
    grpc::ByteBuffer response;
    call->Read(&response, Tag(3));
    if (!cq.Next(&tag, &ok) || !ok) break;
    ++*responses;
  }
  grpc::Status status;
  call->Finish(&status, Tag(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// `message` serialized with `placeholder` (same length) swapped for `bytes` afterwards.
template <typename Message>
std::string WithBytes(const Message& message, const std::string& placeholder,
                      const std::string& bytes) {
  std::string wire = message.SerializeAsString();
  const size_t at = wire.find(placeholder);
  EXPECT_NE(at, std::string::npos);
  EXPECT_EQ(placeholder.size(), bytes.size());
  if (at != std::string::npos) wire.replace(at, placeholder.size(), bytes);
  return wire;
}

TEST(RawBytesTest, UnparsableRequestsGetInternalAndTheServerStaysUp) {
  const CoordinatorOptions options = testing::FakeJobCoordinatorOptions();
  auto server = CoordinatorServer::Start(options, testing::TinyModel());
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub raw(channel);
  auto stub = v1::Generation::NewStub(channel);

  const std::string bad_utf8 = "Hi\xC3\x28\xFF";  // a broken 2-byte sequence, then 0xFF
  v1::GenerateRequest chat;
  chat.set_max_new_tokens(4);
  v1::ChatMessage* m = chat.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("PLACE");
  v1::TokenizeRequest tokenize;
  tokenize.set_text("PLACE");
  const struct {
    const char* name;
    std::string method;
    std::string body;
  } cases[] = {
      {"not protobuf", "/shardlm.v1.Generation/Generate", "\xFF\xFF\xFF\xFF not a message"},
      {"chat content", "/shardlm.v1.Generation/Generate", WithBytes(chat, "PLACE", bad_utf8)},
      {"tokenize text", "/shardlm.v1.Generation/Tokenize", WithBytes(tokenize, "PLACE", bad_utf8)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    int responses = -1;
    const grpc::Status status = RawCall(raw, c.method, c.body, &responses);
    // Pinned as it is: gRPC's protobuf deserializer answers before our validation could name the
    // field. If this starts to fail with INVALID_ARGUMENT, update README's API section.
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
    EXPECT_EQ(responses, 0);
    // The next ordinary request is answered.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::ModelInfo info;
    const grpc::Status next = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    EXPECT_TRUE(next.ok()) << next.error_message();
    EXPECT_EQ(info.model(), "tiny");
  }
  // The same bytes, valid: the service's own answer (no worker attached: UNAVAILABLE).
  int responses = -1;
  chat.mutable_chat()->Clear();
  chat.mutable_token_ids()->add_ids(1);
  const grpc::Status valid =
      RawCall(raw, "/shardlm.v1.Generation/Generate", chat.SerializeAsString(), &responses);
  EXPECT_NE(valid.error_code(), grpc::StatusCode::INTERNAL) << valid.error_message();
  (*server)->Shutdown();
}

}  // namespace
}  // namespace shardlm::coordinator
