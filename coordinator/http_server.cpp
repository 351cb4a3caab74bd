#include "coordinator/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/auth.h"
#include "coordinator/openai_api.h"
#include "coordinator/validation.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

using nlohmann::json;
using openai::ApiError;

namespace {

// How long a waiting handler goes without checking that its client is still connected.
constexpr std::chrono::milliseconds kPeerCheck(500);
// Long prompts as token ids are large bodies; the gRPC API takes as much.
constexpr size_t kMaxBody = 64 << 20;

std::string Dump(const json& j) {
  // Texts are whole UTF-8 characters, but a replacement beats an exception should one not be.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void ReplyJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

void ReplyError(httplib::Response& res, const ApiError& error) {
  ReplyJson(res, error.status, openai::ErrorBody(error));
}

// "cmpl-" and 96 random bits in hex.
std::string ResponseId(const char* prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(prefix, absl::Hex(rng(), absl::kZeroPad16),
                      absl::Hex(rng() >> 32, absl::kZeroPad8));
}

std::string NumericHost(const sockaddr_storage& addr, socklen_t len) {
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return "";
  }
  return host;
}

int Port(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  }
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  }
  return -1;
}

// The socket of the connection `req` came on, to notice when its client goes away (-1 when not
// found). cpp-httplib 0.11 gives a handler the TLS session but not the plain socket, so the
// plain one is found among the process's descriptors by its two ends (unique while the
// connection is open, which it is for as long as the handler runs).
int ConnectionSocket(const httplib::Request& req) {
  if (req.ssl != nullptr) return SSL_get_fd(req.ssl);
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
      continue;
    }
    if (Port(local) == req.local_port && Port(peer) == req.remote_port &&
        NumericHost(peer, peer_len) == req.remote_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

// The client closed its end (or the connection broke). A request pipelined behind this one is
// readable data, not a hang-up.
bool PeerGone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// Set by the response channels' listeners when something arrived on any of them; the handler
// thread waits on it. Shared with the listeners, so a listener call that is under way when the
// call ends never touches freed memory.
struct Arrivals {
  void Notify() {
    absl::MutexLock lock(&mu);
    ready = true;
    cv.Signal();
  }
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready ABSL_GUARDED_BY(mu) = false;
};

// The engine requests of one HTTP call (n samples) and their ends. Whatever way the call ends,
// the requests still live are cancelled, so their KV blocks are freed. Used by one thread at a
// time: the connection's (its handler, then its content provider and releaser).
struct Generation {
  Generation(Engine& e, int socket_fd) : engine(e), socket(socket_fd) {}
  ~Generation() {
    for (auto& h : handles) h->channel.SetListener(nullptr);
    CancelUnfinished();
  }

  void Add(std::shared_ptr<RequestHandle> handle) {
    handle->channel.SetListener([a = arrivals] { a->Notify(); });
    handles.push_back(std::move(handle));
    finals.emplace_back();
  }
  void CancelUnfinished() {
    for (size_t i = 0; i < handles.size(); ++i) {
      if (!finals[i]) {
        engine.Cancel(handles[i]->key);
        finals[i] = absl::CancelledError("the client went away");
      }
    }
  }
  bool done() const {
    for (const auto& f : finals) {
      if (!f) return false;
    }
    return true;
  }

  // What arrived since the last call, by sample index; waits up to `max_wait` (woken by the
  // channels' listeners) when nothing has.
  std::vector<std::pair<int, v1::GenerateResponse>> Next(std::chrono::milliseconds max_wait) {
    std::vector<std::pair<int, v1::GenerateResponse>> out;
    const absl::Time end = absl::Now() + absl::FromChrono(max_wait);
    while (true) {
      {
        // Cleared before taking: whatever arrives after the take sets it again.
        absl::MutexLock lock(&arrivals->mu);
        arrivals->ready = false;
      }
      for (size_t i = 0; i < handles.size(); ++i) {
        if (finals[i]) continue;
        std::vector<v1::GenerateResponse> messages;
        handles[i]->channel.Take(&messages, &finals[i]);
        for (auto& m : messages) out.emplace_back(static_cast<int>(i), std::move(m));
      }
      if (!out.empty() || done()) return out;
      absl::MutexLock lock(&arrivals->mu);
      while (!arrivals->ready) {
        if (arrivals->cv.WaitWithDeadline(&arrivals->mu, end)) return out;  // timed out
      }
    }
  }

  Engine& engine;
  const int socket;
  const std::shared_ptr<Arrivals> arrivals = std::make_shared<Arrivals>();
  std::vector<std::shared_ptr<RequestHandle>> handles;
  std::vector<std::optional<absl::Status>> finals;
};

bool WriteEvent(httplib::DataSink& sink, const std::string& data) {
  const std::string event = absl::StrCat("data: ", data, "\n\n");
  return sink.write(event.data(), event.size());
}

}  // namespace

struct HttpServer::Impl {
  Impl(const CoordinatorOptions& o, const ModelContext& m, Engine& e, HttpHooks h)
      : options(o), model(m), engine(e), hooks(std::move(h)), started(std::time(nullptr)) {}

  void Routes();
  bool Authorized(const httplib::Request& req) const;
  void Completion(openai::Api api, const httplib::Request& req, httplib::Response& res);
  void Tokenize(const httplib::Request& req, httplib::Response& res);
  void Detokenize(const httplib::Request& req, httplib::Response& res);
  void Models(httplib::Response& res) const;
  // The body as a JSON object; false (and a 400 in res) when it is not one.
  bool ParseBody(const httplib::Request& req, httplib::Response& res, json* body) const;
  // Checks "model" when sent; false (and a 404 in res) when it names another model.
  bool CheckModel(const std::string& name, httplib::Response& res) const;

  const CoordinatorOptions options;
  const ModelContext& model;
  Engine& engine;
  const HttpHooks hooks;
  const int64_t started;
  std::unique_ptr<httplib::Server> server;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  std::string address;
  int port = 0;
  std::once_flag stop_once;
};

bool HttpServer::Impl::Authorized(const httplib::Request& req) const {
  if (options.auth_token.empty()) return true;
  return BearerMatches(req.get_header_value("Authorization"), options.auth_token);
}

bool HttpServer::Impl::ParseBody(const httplib::Request& req, httplib::Response& res,
                                 json* body) const {
  *body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body->is_discarded()) {
    ReplyError(res, {400, "body: not valid JSON", ""});
    return false;
  }
  if (!body->is_object()) {
    ReplyError(res,
               {400, absl::StrCat("body: expected a JSON object, got ", body->type_name()), ""});
    return false;
  }
  return true;
}

bool HttpServer::Impl::CheckModel(const std::string& name, httplib::Response& res) const {
  if (name.empty() || openai::ModelNameMatches(name, model.path)) return true;
  ReplyError(res, {404,
                   absl::StrCat("model: '", name, "' is not served here (GET /v1/models: '",
                                model.path, "')"),
                   "model"});
  return false;
}

void HttpServer::Impl::Models(httplib::Response& res) const {
  ReplyJson(res, 200,
            {{"object", "list"},
             {"data", json::array({{{"id", model.path},
                                    {"object", "model"},
                                    {"created", started},
                                    {"owned_by", "shardlm"},
                                    {"root", model.path},
                                    {"max_model_len", model.context_length}}})}});
}

void HttpServer::Impl::Completion(openai::Api api, const httplib::Request& req,
                                  httplib::Response& res) {
  const Engine::Clock::time_point arrival = Engine::Clock::now();
  json body;
  if (!ParseBody(req, res, &body)) return;
  absl::StatusOr<openai::CompletionRequest> parsed = openai::ParseCompletionRequest(api, body);
  if (!parsed.ok()) return ReplyError(res, openai::ToApiError(parsed.status()));
  if (!CheckModel(parsed->model, res)) return;
  absl::StatusOr<std::vector<PreparedRequest>> prepared = openai::PrepareSamples(*parsed, model);
  if (!prepared.ok()) return ReplyError(res, openai::ToApiError(prepared.status()));

  auto gen = std::make_shared<Generation>(engine, ConnectionSocket(req));
  for (PreparedRequest& p : *prepared) {
    absl::StatusOr<std::shared_ptr<RequestHandle>> handle = engine.Submit(std::move(p), arrival);
    if (!handle.ok()) {
      spdlog::info("HTTP {} refused: {}", req.path, handle.status().ToString());
      return ReplyError(res, openai::SubmitError(handle.status(), *parsed));
    }
    gen->Add(std::move(*handle));
  }
  auto builder = std::make_shared<openai::ResponseBuilder>(
      *parsed, ResponseId(api == openai::Api::kChat ? "chatcmpl-" : "cmpl-"),
      static_cast<int64_t>(std::time(nullptr)), model.path);
  // A sample that ended with an error (UNAVAILABLE at shutdown, INTERNAL, ...), if any.
  auto failure = [gen]() -> std::optional<absl::Status> {
    for (const auto& f : gen->finals) {
      if (f && !f->ok()) return *f;
    }
    return std::nullopt;
  };

  if (!parsed->stream) {
    while (!gen->done()) {
      for (auto& [i, m] : gen->Next(kPeerCheck)) builder->Add(i, m);
      if (!gen->done() && PeerGone(gen->socket)) {
        spdlog::info("HTTP {}: the client went away; cancelling its {} request(s)", req.path,
                     gen->handles.size());
        gen->CancelUnfinished();
        return;
      }
    }
    if (std::optional<absl::Status> error = failure()) {
      return ReplyError(res, openai::ToApiError(*error));
    }
    return ReplyJson(res, 200, builder->Response());
  }

  const bool include_usage = parsed->include_usage;
  const std::string path = req.path;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, builder, include_usage, failure, path](size_t, httplib::DataSink& sink) {
        auto finish = [&] {
          if (include_usage) WriteEvent(sink, Dump(builder->UsageChunk()));
          WriteEvent(sink, "[DONE]");
          sink.done();
          return true;
        };
        for (auto& [i, m] : gen->Next(kPeerCheck)) {
          json chunk = builder->Chunk(i, m);
          if (!chunk.is_null() && !WriteEvent(sink, Dump(chunk))) {
            spdlog::info("HTTP {}: the client went away mid-stream; cancelling", path);
            gen->CancelUnfinished();
            return false;
          }
        }
        if (std::optional<absl::Status> error = failure()) {
          // Headers are out: the error goes as an event of its own, then the stream ends.
          gen->CancelUnfinished();
          WriteEvent(sink, Dump(openai::ErrorBody(openai::ToApiError(*error))));
          return finish();
        }
        if (gen->done()) return finish();
        // Without the socket (not found), an SSE comment probes the connection instead.
        static constexpr char kProbe[] = ": keep-alive\n\n";
        if (gen->socket < 0 ? !sink.write(kProbe, sizeof(kProbe) - 1) : PeerGone(gen->socket)) {
          spdlog::info("HTTP {}: the client went away mid-stream; cancelling", path);
          gen->CancelUnfinished();
          return false;
        }
        return true;
      },
      [gen](bool) { gen->CancelUnfinished(); });
}

void HttpServer::Impl::Tokenize(const httplib::Request& req, httplib::Response& res) {
  json body;
  if (!ParseBody(req, res, &body)) return;
  if (body.contains("model") && body["model"].is_string() &&
      !CheckModel(body["model"].get<std::string>(), res)) {
    return;
  }
  absl::StatusOr<std::vector<int32_t>> ids;
  if (body.contains("messages")) {
    absl::StatusOr<v1::ChatMessages> chat = openai::ParseMessages(body["messages"]);
    if (!chat.ok()) return ReplyError(res, openai::ToApiError(chat.status()));
    ids = TokenizeChat(model, *chat, "");
    if (!ids.ok()) ids = openai::RenameFields(ids.status(), openai::Api::kChat);
  } else if (body.contains("prompt") && body["prompt"].is_string()) {
    bool add_special = true;
    if (body.contains("add_special_tokens")) {
      if (!body["add_special_tokens"].is_boolean()) {
        return ReplyError(res,
                          {400, "add_special_tokens: expected a boolean", "add_special_tokens"});
      }
      add_special = body["add_special_tokens"].get<bool>();
    }
    ids = TokenizeText(model, body["prompt"].get<std::string>(), add_special, "prompt");
  } else {
    return ReplyError(res, {400, "prompt: expected a string prompt, or messages", "prompt"});
  }
  if (!ids.ok()) return ReplyError(res, openai::ToApiError(ids.status()));
  ReplyJson(res, 200,
            {{"tokens", *ids}, {"count", ids->size()}, {"max_model_len", model.context_length}});
}

void HttpServer::Impl::Detokenize(const httplib::Request& req, httplib::Response& res) {
  json body;
  if (!ParseBody(req, res, &body)) return;
  if (body.contains("model") && body["model"].is_string() &&
      !CheckModel(body["model"].get<std::string>(), res)) {
    return;
  }
  if (!body.contains("tokens") || !body["tokens"].is_array()) {
    return ReplyError(res, {400, "tokens: expected an array of token ids", "tokens"});
  }
  std::vector<int32_t> ids;
  const json& tokens = body["tokens"];
  for (size_t i = 0; i < tokens.size(); ++i) {
    const json& t = tokens[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= model.config.vocab_size) {
      return ReplyError(res, {400,
                              absl::StrCat("tokens[", i, "]: expected a token id in [0, ",
                                           model.config.vocab_size, "), got ", t.dump()),
                              "tokens"});
    }
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  if (model.tokenizer == nullptr) {
    return ReplyError(res, {400,
                            absl::StrCat("tokens: the model ", model.path, " has no tokenizer (",
                                         model.tokenizer_status.message(), ")"),
                            "tokens"});
  }
  ReplyJson(res, 200, {{"prompt", model.tokenizer->Decode(ids, /*skip_special=*/false)}});
}

void HttpServer::Impl::Routes() {
  httplib::Server& s = *server;
  // Bearer token: every route but the probes (/health) and the scrape (/metrics).
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health" || req.path == "/metrics" || Authorized(req)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("WWW-Authenticate", "Bearer");
    ReplyError(res, {401, "missing or wrong bearer token (Authorization: Bearer TOKEN)", ""});
    return httplib::Server::HandlerResponse::Handled;
  });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Completion(openai::Api::kCompletions, req, res);
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Completion(openai::Api::kChat, req, res);
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { Models(res); });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (hooks.serving && hooks.serving()) return ReplyJson(res, 200, {{"status", "serving"}});
    ReplyError(res, {503, "not serving: no loaded worker job is attached, or shutting down", ""});
  });
  s.Post("/tokenize",
         [this](const httplib::Request& req, httplib::Response& res) { Tokenize(req, res); });
  s.Post("/detokenize",
         [this](const httplib::Request& req, httplib::Response& res) { Detokenize(req, res); });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (!hooks.metrics_text) return ReplyError(res, {404, "no metrics here", ""});
    res.status = 200;
    res.set_content(hooks.metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // Unmatched routes (and any error a handler left without a body) get an OpenAI error body.
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                              httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string message =
        res.status == 404 ? absl::StrCat("route not found: ", req.method, " ", req.path)
                          : absl::StrCat("HTTP ", res.status, " on ", req.method, " ", req.path);
    ReplyError(res, {res.status, message, ""});
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr e) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          what = ex.what();
        } catch (...) {
        }
        spdlog::error("HTTP {} {}: {}", req.method, req.path, what);
        ReplyError(res, {500, absl::StrCat("internal error: ", what), ""});
      });
  s.set_payload_max_length(kMaxBody);
  const size_t threads = static_cast<size_t>(options.http_threads);
  // Requests beyond the threads wait in the pool's queue (cpp-httplib's is unbounded).
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

const std::string& HttpServer::address() const { return impl_->address; }
int HttpServer::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const CoordinatorOptions& options,
                                                              const ModelContext& model,
                                                              Engine& engine, HttpHooks hooks) {
  // A write to a connection the client closed must fail with EPIPE, not kill the process (TLS
  // writes go through OpenSSL's plain write(), which has no MSG_NOSIGNAL).
  signal(SIGPIPE, SIG_IGN);
  auto impl = std::make_unique<Impl>(options, model, engine, std::move(hooks));
  if (!options.tls_cert.empty()) {
    auto tls = std::make_unique<httplib::SSLServer>(
        options.tls_cert.c_str(), options.tls_key.c_str(),
        options.tls_client_ca.empty() ? nullptr : options.tls_client_ca.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls-cert ", options.tls_cert, " / --tls-key ", options.tls_key,
          options.tls_client_ca.empty()
              ? ""
              : absl::StrCat(" / --tls-client-ca ", options.tls_client_ca),
          ": cannot load them for the HTTP server (PEM files of a matching certificate and key "
          "expected)"));
    }
    impl->server = std::move(tls);
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  impl->Routes();

  const std::string& listen = options.http_listen;
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  const std::string port_text = colon == std::string::npos ? "" : listen.substr(colon + 1);
  std::string bind_host = host;
  if (bind_host.size() >= 2 && bind_host.front() == '[' && bind_host.back() == ']') {
    bind_host = bind_host.substr(1, bind_host.size() - 2);
  }
  int port = 0;
  if (port_text.empty() || !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http-listen ", listen, ": expected HOST:PORT"));
  }
  if (port == 0) {
    port = impl->server->bind_to_any_port(bind_host);
  } else if (!impl->server->bind_to_port(bind_host, port)) {
    port = -1;
  }
  if (port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("--http-listen ", listen, ": cannot listen there (in use or invalid)"));
  }
  impl->port = port;
  impl->address = absl::StrCat(host, ":", port);
  httplib::Server* server = impl->server.get();
  std::atomic<bool>* returned = &impl->listen_returned;
  impl->thread = std::thread([server, returned] {
    server->listen_after_bind();
    *returned = true;
  });
  spdlog::info("HTTP API ({}{}) on {}", options.tls_cert.empty() ? "plaintext" : "TLS",
               options.tls_client_ca.empty() ? "" : ", client certificates required",
               impl->address);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

void HttpServer::Stop() {
  std::call_once(impl_->stop_once, [this] {
    // stop() only acts once the accept loop runs: wait for it to have started (or ended).
    while (!impl_->listen_returned && !impl_->server->is_running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    impl_->server->stop();
    if (impl_->thread.joinable()) impl_->thread.join();
  });
}

}  // namespace shardlm::coordinator
