// Early-return helpers for absl::Status / absl::StatusOr (abseil 20220623 ships none).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHARDLM_CONCAT_INNER(a, b) a##b
#define SHARDLM_CONCAT(a, b) SHARDLM_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define SHARDLM_RETURN_IF_ERROR(expr)                                      \
  do {                                                                     \
    ::absl::Status shardlm_status_ = (expr);                               \
    if (!shardlm_status_.ok()) return shardlm_status_;                     \
  } while (0)

// `lhs = *expr` when `expr` (a StatusOr) is OK, else returns its status. `lhs` may declare a
// variable: SHARDLM_ASSIGN_OR_RETURN(auto x, F());
#define SHARDLM_ASSIGN_OR_RETURN(lhs, expr) \
  SHARDLM_ASSIGN_OR_RETURN_IMPL(SHARDLM_CONCAT(shardlm_statusor_, __LINE__), lhs, expr)
#define SHARDLM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(*tmp)
