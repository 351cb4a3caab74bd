// Helpers shared by the libFuzzer harnesses of tests/fuzz: the input as a file for readers that
// take a path, splitting one input into several strings, the real model the tokenizer and
// request harnesses load, and the check that stops a run on a broken invariant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "formats/weight_source.h"

namespace shardlm::fuzz {

// A broken invariant: prints what and aborts, which libFuzzer (and the replay main) report as a
// crash with the input that caused it.
#define SHARDLM_FUZZ_CHECK(cond, ...)                                                   \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                \
      std::fprintf(stderr, "\n");                                                       \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

// An in-memory file (memfd) that holds the current input; path() names it for readers that take
// a path (/proc/self/fd/N). One per harness, rewritten for each input: no disk I/O per run.
class MemFile {
 public:
  MemFile();
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  // Replaces the content with `bytes`.
  void Set(std::string_view bytes);
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Splits `data` at each occurrence of `sep` (the separator is dropped): several strings from one
// input, with libFuzzer's mutations free to move the boundaries.
std::vector<std::string_view> Split(std::string_view data, std::string_view sep);

// The real model of the harnesses that need a tokenizer: $SHARDLM_FUZZ_MODEL, else
// <source>/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/get-model.sh). When it is missing,
// prints why and exits 77 (ctest: Skipped).
std::string ModelPathOrSkip();

// What a loader does with each tensor of a checkpoint file of `file_size` bytes: Info (a range
// inside the file), Load (as many bytes as Info says), LoadRows and LoadColumns at the edges and
// past them, reading the first and last byte of every tensor returned (ASan reports a view
// outside the mapping), Populate and Release.
void ReadWeights(const WeightSource& source, size_t file_size);

}  // namespace shardlm::fuzz
