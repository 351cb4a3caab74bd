#!/usr/bin/env bash
# The coordinator runs no compute: its binary must link none of shardlm's compute libraries
# (kernels, quantized CPU kernels, model, parallel, runtime, worker) nor the libraries only they
# need (MPI, OpenBLAS, OpenMP, CUDA, cuBLAS, NCCL). Checked on what was built, two ways:
#   1. the link command ninja ran for the binary (static libraries: libshardlm_*.a);
#   2. the shared libraries the binary loads (ldd).
# Usage: coordinator_links.sh BUILD_DIR TARGET_FILE
# Exit 77 (ctest: Skipped) when the build does not use Ninja (no link command to read).
set -euo pipefail
build_dir=$(cd "$1" && pwd)
binary=$2
if [ ! -f "$build_dir/build.ninja" ]; then
  echo "SKIP: $build_dir is not a Ninja build; cannot read the coordinator's link command"
  exit 77
fi
rel=${binary#"$build_dir"/}
# `ninja -t commands T` prints every command that builds T; the last one is its link.
link=$(ninja -C "$build_dir" -t commands "$rel" | tail -n 1)
case "$link" in
  *"$rel"*) ;;
  *) echo "FAIL: no link command for $rel in $build_dir (got: ${link:0:200})"; exit 1 ;;
esac
forbidden_static='libshardlm_(kernels|kernels_cpu|kernels_cuda|quant_cpu|model|parallel|parallel_mpi|parallel_nccl|runtime|worker|backend_setup)\.a'
forbidden_shared='lib(mpi|mpi_cxx|open-pal|open-rte|openblas|gomp|cudart|cublas|cublasLt|nccl)\.so'
status=0
if bad=$(grep -oE "$forbidden_static" <<<"$link" | sort -u) && [ -n "$bad" ]; then
  echo "FAIL: $rel links compute libraries:"; echo "$bad"; status=1
fi
if bad=$(grep -oE -- "-l(mpi|openblas|gomp|cudart|cublas|nccl)\b|$forbidden_shared" <<<"$link" | sort -u) &&
    [ -n "$bad" ]; then
  echo "FAIL: $rel's link command names:"; echo "$bad"; status=1
fi
if bad=$(ldd "$binary" | grep -oE "$forbidden_shared" | sort -u) && [ -n "$bad" ]; then
  echo "FAIL: $rel loads:"; echo "$bad"; status=1
fi
if [ $status -eq 0 ]; then
  echo "OK: $rel links only: $(grep -oE 'libshardlm_[a-z_]+\.a' <<<"$link" | sort -u | tr '\n' ' ')"
fi
exit $status
