#include "coordinator/options.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/secret.h"

namespace shardlm::coordinator {

absl::Status ValidateOptions(const CoordinatorOptions& o) {
  auto bad = [](const std::string& flag, const std::string& want, auto got) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected ", want, ", got ", got));
  };
  if (o.listen.empty() || o.listen.rfind(':') == std::string::npos) {
    return bad("--listen", "HOST:PORT", absl::StrCat("'", o.listen, "'"));
  }
  if (o.worker_listen.empty() || o.worker_listen.rfind(':') == std::string::npos) {
    return bad("--worker-listen", "HOST:PORT", absl::StrCat("'", o.worker_listen, "'"));
  }
  if (o.worker_listen == o.listen && !absl::EndsWith(o.listen, ":0")) {
    return bad("--worker-listen",
               "an address other than --listen's (the public port never "
               "offers the worker service)",
               absl::StrCat("'", o.worker_listen, "'"));
  }
  if (o.worker_secret.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--worker-secret-file is required: a file holding a shared secret of at least ",
        kMinSecretBytes, " bytes, given to both shardlm-coordinator and shardlm-worker"));
  }
  if (o.worker_secret.size() < kMinSecretBytes) {
    return bad("--worker-secret-file",
               absl::StrCat("a secret of at least ", kMinSecretBytes, " bytes"),
               absl::StrCat(o.worker_secret.size(), " bytes"));
  }
  if (o.worker_hello_timeout.count() <= 0) {
    return bad("worker_hello_timeout", "> 0 ms", o.worker_hello_timeout.count());
  }
  if (o.model.empty()) return bad("--model", "a model path", "''");
  if (o.tp < 1) return bad("--tp", ">= 1", o.tp);
  if (o.pp < 1) return bad("--pp", ">= 1", o.pp);
  if (o.ep < 1) return bad("--ep", ">= 1", o.ep);
  if (o.tp % o.ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ep ", o.ep, " does not divide --tp ", o.tp,
                     ": the experts of a stage are spread over its TP ranks"));
  }
  if (!o.pp_layers.empty()) {
    std::vector<std::string> parts = absl::StrSplit(o.pp_layers, ',');
    if (static_cast<int32_t>(parts.size()) != o.pp - 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pp-layers: expected pp - 1 = ", o.pp - 1,
                       " layer indices where stages 1.. start, got ", parts.size(), " ('",
                       o.pp_layers, "')"));
    }
    int64_t prev = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      int64_t layer = 0;
      if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(parts[i]), &layer) || layer <= prev) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--pp-layers: element ", i, " is '", parts[i],
            "', expected increasing positive layer indices (e.g. 10,20)"));
      }
      prev = layer;
    }
  }
  if (o.max_batch_tokens < 1) return bad("--max-batch-tokens", ">= 1", o.max_batch_tokens);
  if (o.steps_in_flight < 0 || o.steps_in_flight > 64) {
    return bad("--steps-in-flight", "a value in [0, 64]", o.steps_in_flight);
  }
  if (!(o.step_time_ratio == 0 || (o.step_time_ratio >= 1 && o.step_time_ratio <= 1000))) {
    return bad("--step-time-ratio", "0 (off) or a ratio in [1, 1000]", o.step_time_ratio);
  }
  if (!(o.max_step_time_ms >= 0 && o.max_step_time_ms <= 86400e3)) {
    return bad("--max-step-time-ms", "milliseconds in [0, 86400000] (0: off)", o.max_step_time_ms);
  }
  if (o.kv_block_size < 1 || o.kv_block_size > 65536) {
    return bad("--kv-block-size", "a value in [1, 65536]", o.kv_block_size);
  }
  if (o.max_queue < 0) return bad("--max-queue", ">= 0", o.max_queue);
  if (o.max_running < 1) return bad("--max-running", ">= 1", o.max_running);
  if (o.threads < 0) return bad("--threads", ">= 0", o.threads);
  if (o.max_model_len < 0) return bad("--max-model-len", ">= 0", o.max_model_len);
  // A day bounds both: beyond it a wait is a mistake, and the millisecond counts stay small.
  if (!(o.step_timeout_s >= 0 && o.step_timeout_s <= 86400)) {
    return bad("--step-timeout", "seconds in [0, 86400] (0: automatic)", o.step_timeout_s);
  }
  if (!(o.requeue_timeout_s >= 0 && o.requeue_timeout_s <= 86400)) {
    return bad("--requeue-timeout", "seconds in [0, 86400]", o.requeue_timeout_s);
  }
  if (!o.http_listen.empty()) {
    if (o.http_listen.rfind(':') == std::string::npos) {
      return bad("--http-listen", "HOST:PORT", absl::StrCat("'", o.http_listen, "'"));
    }
    if ((o.http_listen == o.listen || o.http_listen == o.worker_listen) &&
        !absl::EndsWith(o.http_listen, ":0")) {
      return bad("--http-listen", "an address of its own (not --listen's or --worker-listen's)",
                 absl::StrCat("'", o.http_listen, "'"));
    }
  }
  if (o.http_threads < 1 || o.http_threads > 4096) {
    return bad("--http-threads", "a value in [1, 4096]", o.http_threads);
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key: expected both (a certificate chain and its private key) or "
        "neither");
  }
  if (!o.tls_client_ca.empty() && o.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca: needs --tls-cert and --tls-key (client certificates are checked "
        "only over TLS)");
  }
  if (!o.auth_token.empty() && o.auth_token.size() < kMinSecretBytes) {
    return bad("--auth-token-file", absl::StrCat("a token of at least ", kMinSecretBytes, " bytes"),
               absl::StrCat(o.auth_token.size(), " bytes"));
  }
  if (!(o.drain_timeout_s >= 0 && o.drain_timeout_s <= 86400)) {
    return bad("--drain-timeout", "seconds in [0, 86400]", o.drain_timeout_s);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text_in) {
  const std::string text(text_in);
  const std::string s(absl::StripAsciiWhitespace(text));
  size_t split = 0;
  while (split < s.size() && (std::isdigit(static_cast<unsigned char>(s[split])) || s[split] == '.')) {
    ++split;
  }
  const std::string number = s.substr(0, split);
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(split)));
  double value = 0;
  if (number.empty() || !absl::SimpleAtod(number, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a size: expected e.g. 256MiB, 1GiB, 1048576"));
  }
  double scale = 0;
  if (unit.empty() || unit == "b") {
    scale = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    scale = 1024.0;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    scale = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    scale = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tb" || unit == "tib") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "': unknown unit '", unit, "' (expected B, KiB, MiB, GiB, TiB)"));
  }
  const double bytes = value * scale;
  if (bytes >= 1.8e19) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is too large"));
  return static_cast<uint64_t>(bytes);
}

int64_t ContextLength(int64_t max_position_embeddings, int64_t max_model_len) {
  if (max_position_embeddings <= 0) return max_model_len > 0 ? max_model_len : kDefaultContextLength;
  return max_model_len > 0 ? std::min(max_position_embeddings, max_model_len)
                           : max_position_embeddings;
}

}  // namespace shardlm::coordinator
