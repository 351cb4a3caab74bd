// Security of the public gRPC API (--listen), both ends: the server's credentials (TLS with
// --tls-cert/--tls-key, mTLS with --tls-client-ca) and its bearer-token check
// (--auth-token-file), and the clients' channel (a CA to trust, a client certificate, the token
// sent as "authorization: Bearer TOKEN" on every call). The workers' attach is guarded apart
// (--worker-secret-file, worker_service.h).
//
// Health checks (/grpc.health.v1.Health/*) are open without the token, so that load balancers
// and kubelet probes need no secret; they still need TLS (and a client certificate under mTLS)
// when it is on. Everything else, server reflection included (it maps the API), needs the token.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/auth_metadata_processor.h>

#include "absl/status/statusor.h"
#include "coordinator/options.h"

namespace shardlm::coordinator {

// The metadata key of the token (lower case, as gRPC carries keys) and its scheme.
inline constexpr char kAuthorizationKey[] = "authorization";

// An "authorization" value (gRPC metadata or HTTP header) is "Bearer <token>": the scheme in any
// case (RFC 6750), the token compared in constant time (SecretsEqual).
bool BearerMatches(std::string_view value, std::string_view token);

// "/grpc.health.v1.Health/..." (a gRPC :path): callable without the token.
bool IsOpenWithoutToken(std::string_view path);

// Whether a call to `path` carrying these "authorization" values may go on when the server's
// token is `token` (non-empty): OK for an open path or a value "Bearer <token>" (scheme in any
// case, RFC 6750), else UNAUTHENTICATED saying what was missing. Tokens are compared in constant
// time (SecretsEqual) and never appear in a message.
grpc::Status CheckBearerToken(std::string_view path,
                              const std::vector<std::string_view>& authorization,
                              std::string_view token);

// The AuthMetadataProcessor that runs CheckBearerToken on every call of a TLS server; it
// consumes the authorization entry, so that handlers never see the token.
class BearerTokenProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit BearerTokenProcessor(std::string token) : token_(std::move(token)) {}
  bool IsBlocking() const override { return false; }  // a compare: runs on gRPC's thread
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const std::string token_;
};

// The PEM text of `path`, checked with OpenSSL: one or more X.509 certificates, or one private
// key. Errors name `flag` and the path (missing, unreadable, not PEM of that kind).
absl::StatusOr<std::string> ReadPemCertificates(const std::string& flag, const std::string& path);
absl::StatusOr<std::string> ReadPemPrivateKey(const std::string& flag, const std::string& path);

// The credentials of the public server for `options`: TLS when tls_cert/tls_key are set (their
// files read and checked now: the key must match the certificate), client certificates
// required and verified against tls_client_ca when set, and with auth_token a
// BearerTokenProcessor. Plaintext with a token uses a credentials object of gRPC's core (the
// C++ InsecureServerCredentials() refuses an AuthMetadataProcessor in gRPC 1.51) that runs the
// same check. `description` (when not null) gets a line for the start-up log.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> PublicServerCredentials(
    const CoordinatorOptions& options, std::string* description = nullptr);

// A listening address (HOST:PORT, "unix:PATH") that only this machine can reach: a loopback
// host ("127.0.0.1", "[::1]", "localhost") or a Unix socket.
bool IsLoopbackAddress(std::string_view address);

// What a client presents to a secured public API: PEM text and token bytes, not paths. TLS is
// on when any PEM is set (an empty CA: the system's roots).
struct ClientSecurity {
  std::string tls_ca_pem;
  std::string tls_cert_pem;  // with tls_key_pem: a client certificate (mTLS)
  std::string tls_key_pem;
  std::string auth_token;  // "" sends none
  bool tls() const { return !tls_ca_pem.empty() || !tls_cert_pem.empty(); }
};

// Reads the files of the client flags ("" for an unset one): --tls-ca, --tls-cert, --tls-key
// (PEM, checked), --auth-token-file (ReadSecretFile). Errors name the flag and the file.
absl::StatusOr<ClientSecurity> LoadClientSecurity(const std::string& tls_ca,
                                                  const std::string& tls_cert,
                                                  const std::string& tls_key,
                                                  const std::string& auth_token_file);

// A channel to `target` with `security`: TLS credentials when security.tls(), else insecure;
// with a token, an interceptor adds "authorization: Bearer TOKEN" to every call (metadata rather
// than call credentials, which gRPC sends over TLS only, so that a plaintext loopback server
// with a token can be reached too).
std::shared_ptr<grpc::Channel> CreateClientChannel(const std::string& target,
                                                   const ClientSecurity& security,
                                                   const grpc::ChannelArguments& args = {});

}  // namespace shardlm::coordinator
