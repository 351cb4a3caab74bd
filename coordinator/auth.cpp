#include "coordinator/auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <utility>
#include <vector>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/log.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include "absl/strings/str_cat.h"
#include "base/secret.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {

constexpr std::string_view kBearer = "bearer ";

// ASCII case-insensitive (header schemes and host names).
bool HasPrefixIgnoringCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view View(const grpc_slice& s) {
  return {reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)), GRPC_SLICE_LENGTH(s)};
}

// --- The token check on plaintext: gRPC core's insecure server credentials with a C-level
// auth metadata processor. The server auth filter of gRPC core runs a processor on any
// credentials that carry one, but grpc::InsecureServerCredentials() of the C++ API (1.51) does
// not wrap core credentials and aborts in SetAuthMetadataProcessor. LocalServerCredentials
// (LOCAL_TCP) would run one, but accepts loopback peers only.

void ProcessPlaintext(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md,
                      size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  const std::string& token = *static_cast<const std::string*>(state);
  std::string_view path;
  std::vector<std::string_view> authorization;
  std::vector<grpc_metadata> consumed;
  for (size_t i = 0; i < num_md; ++i) {
    const std::string_view key = View(md[i].key);
    if (key == ":path") path = View(md[i].value);
    if (key == kAuthorizationKey) {
      authorization.push_back(View(md[i].value));
      consumed.push_back(md[i]);
    }
  }
  const grpc::Status status = CheckBearerToken(path, authorization, token);
  if (status.ok()) {
    done(user_data, consumed.data(), consumed.size(), nullptr, 0, GRPC_STATUS_OK, nullptr);
  } else {
    done(user_data, nullptr, 0, nullptr, 0, static_cast<grpc_status_code>(status.error_code()),
         status.error_message().c_str());
  }
}

class PlaintextTokenCredentials final : public grpc::ServerCredentials {
 public:
  explicit PlaintextTokenCredentials(std::string token) : token_(std::move(token)) {}

  // The check is built in; another processor has no place here.
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    GPR_ASSERT(false && "PlaintextTokenCredentials checks its own token");
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    grpc_server_credentials* creds = grpc_insecure_server_credentials_create();
    // Core owns the state from here (the builder that holds *this goes once the server starts).
    grpc_server_credentials_set_auth_metadata_processor(
        creds, {ProcessPlaintext, [](void* s) { delete static_cast<std::string*>(s); },
                new std::string(token_)});
    const int port = grpc_server_add_http2_port(server, addr.c_str(), creds);
    grpc_server_credentials_release(creds);  // the server holds its own reference
    return port;
  }

  const std::string token_;
};

// Adds "authorization: Bearer TOKEN" to the initial metadata of every call.
class BearerInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(const std::string* value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kAuthorizationKey, *value_);
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;
};

class BearerInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(const std::string& token) : value_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(&value_);  // the channel owns the factory, outliving its calls
  }

 private:
  const std::string value_;
};

// OpenSSL's reasons for the last failure, then its queue cleared.
std::string OpenSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "no PEM block found" : out;
}

using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;
Bio MemBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
}

// Refuses to prompt for the passphrase of an encrypted key (OpenSSL's default reads the tty).
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::Status KeyMatchesCertificate(const std::string& cert_pem, const std::string& key_pem,
                                   const CoordinatorOptions& o) {
  Bio cert_bio = MemBio(cert_pem), key_bio = MemBio(key_pem);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr), &X509_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr), &EVP_PKEY_free);
  if (cert == nullptr || key == nullptr || X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", o.tls_key, ": not the private key of the (first) certificate of --tls-cert ",
        o.tls_cert));
  }
  return absl::OkStatus();
}

}  // namespace

bool BearerMatches(std::string_view value, std::string_view token) {
  if (!HasPrefixIgnoringCase(value, kBearer)) return false;
  value.remove_prefix(kBearer.size());
  value.remove_prefix(std::min(value.find_first_not_of(' '), value.size()));
  return SecretsEqual(value, token);
}

bool IsOpenWithoutToken(std::string_view path) {
  return path.starts_with("/grpc.health.v1.Health/");
}

grpc::Status CheckBearerToken(std::string_view path,
                              const std::vector<std::string_view>& authorization,
                              std::string_view token) {
  if (IsOpenWithoutToken(path)) return grpc::Status::OK;
  if (authorization.empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "this server requires a bearer token: send the metadata 'authorization: "
                        "Bearer <token>' (shardlm clients: --auth-token-file)");
  }
  bool match = false;
  // Every value is compared (no early exit).
  for (std::string_view value : authorization) match |= BearerMatches(value, token);
  if (!match) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "invalid bearer token: 'authorization' must be 'Bearer <token>' with the "
                        "token of the server's --auth-token-file");
  }
  return grpc::Status::OK;
}

grpc::Status BearerTokenProcessor::Process(const InputMetadata& auth_metadata,
                                           grpc::AuthContext* /*context*/,
                                           OutputMetadata* consumed_auth_metadata,
                                           OutputMetadata* /*response_metadata*/) {
  std::string_view path;
  if (auto it = auth_metadata.find(":path"); it != auth_metadata.end()) {
    path = std::string_view(it->second.data(), it->second.size());
  }
  std::vector<std::string_view> authorization;
  auto [begin, end] = auth_metadata.equal_range(kAuthorizationKey);
  for (auto it = begin; it != end; ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  grpc::Status status = CheckBearerToken(path, authorization, token_);
  if (status.ok()) {
    for (std::string_view value : authorization) {
      consumed_auth_metadata->emplace(kAuthorizationKey, std::string(value));
    }
  }
  return status;
}

absl::StatusOr<std::string> ReadPemCertificates(const std::string& flag, const std::string& path) {
  absl::StatusOr<std::string> pem = ReadSecretFile(flag, path);
  if (!pem.ok()) return pem.status();
  Bio bio = MemBio(*pem);
  int count = 0;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    X509_free(cert);
    ++count;
  }
  // The loop ends on "no start line" at the end of the text; any other reason is a bad block.
  const unsigned long last = ERR_peek_last_error();
  if (count == 0 || (last != 0 && ERR_GET_REASON(last) != PEM_R_NO_START_LINE)) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " ", path,
        ": expected PEM X.509 certificates (-----BEGIN CERTIFICATE-----): ", OpenSslError()));
  }
  ERR_clear_error();
  return pem;
}

absl::StatusOr<std::string> ReadPemPrivateKey(const std::string& flag, const std::string& path) {
  std::string warning;
  absl::StatusOr<std::string> pem = ReadSecretFile(flag, path, &warning);
  if (!pem.ok()) return pem.status();
  Bio bio = MemBio(*pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path,
                     ": expected an unencrypted PEM private key (-----BEGIN PRIVATE "
                     "KEY-----): ",
                     OpenSslError()));
  }
  EVP_PKEY_free(key);
  ERR_clear_error();
  if (!warning.empty()) spdlog::warn("{}", warning);
  return pem;
}

bool IsLoopbackAddress(std::string_view address) {
  if (address.starts_with("unix:") || address.starts_with("unix-abstract:")) return true;
  std::string_view host = address.substr(0, address.rfind(':'));
  if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
  if (host.size() == 9 && HasPrefixIgnoringCase(host, "localhost")) return true;
  const std::string h(host);
  in_addr v4;
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> PublicServerCredentials(
    const CoordinatorOptions& o, std::string* description) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  std::string what;
  if (!o.tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPemCertificates("--tls-cert", o.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemPrivateKey("--tls-key", o.tls_key);
    if (!key.ok()) return key.status();
    if (absl::Status match = KeyMatchesCertificate(*cert, *key, o); !match.ok()) return match;
    grpc::SslServerCredentialsOptions ssl(
        o.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    if (!o.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadPemCertificates("--tls-client-ca", o.tls_client_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
    what = o.tls_client_ca.empty()
               ? "TLS"
               : absl::StrCat("mTLS (client certificates signed by --tls-client-ca ",
                              o.tls_client_ca, " required)");
    if (!o.auth_token.empty()) {
      creds->SetAuthMetadataProcessor(std::make_shared<BearerTokenProcessor>(o.auth_token));
    }
  } else {
    creds = o.auth_token.empty() ? grpc::InsecureServerCredentials()
                                 : std::make_shared<PlaintextTokenCredentials>(o.auth_token);
    what = "plaintext (no TLS)";
  }
  if (description != nullptr) {
    *description = absl::StrCat(
        what, ", ",
        o.auth_token.empty()
            ? "no token"
            : "bearer token of --auth-token-file required (health checks open without it)");
  }
  return creds;
}

absl::StatusOr<ClientSecurity> LoadClientSecurity(const std::string& tls_ca,
                                                  const std::string& tls_cert,
                                                  const std::string& tls_key,
                                                  const std::string& auth_token_file) {
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key: expected both (a client certificate and its private key) or "
        "neither");
  }
  ClientSecurity out;
  if (!tls_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPemCertificates("--tls-ca", tls_ca);
    if (!ca.ok()) return ca.status();
    out.tls_ca_pem = std::move(*ca);
  }
  if (!tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPemCertificates("--tls-cert", tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemPrivateKey("--tls-key", tls_key);
    if (!key.ok()) return key.status();
    out.tls_cert_pem = std::move(*cert);
    out.tls_key_pem = std::move(*key);
  }
  if (!auth_token_file.empty()) {
    std::string warning;
    absl::StatusOr<std::string> token =
        ReadSecretFile("--auth-token-file", auth_token_file, &warning);
    if (!token.ok()) return token.status();
    if (!warning.empty()) spdlog::warn("{}", warning);
    out.auth_token = std::move(*token);
  }
  return out;
}

std::shared_ptr<grpc::Channel> CreateClientChannel(const std::string& target,
                                                   const ClientSecurity& security,
                                                   const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (security.tls()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = security.tls_ca_pem;
    ssl.pem_private_key = security.tls_key_pem;
    ssl.pem_cert_chain = security.tls_cert_pem;
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!security.auth_token.empty()) {
    interceptors.push_back(std::make_unique<BearerInterceptorFactory>(security.auth_token));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, creds, args,
                                                                 std::move(interceptors));
}

}  // namespace shardlm::coordinator
