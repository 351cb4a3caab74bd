#!/usr/bin/env bash
# Builds ./.gpu-sysroot: the Debian 12 build dependencies of shardlm's GPU-only build
# (-DSHARDLM_SERVICE=OFF: abseil, protobuf + protoc, spdlog/fmt, nlohmann-json, CLI11, OpenBLAS,
# gtest/gmock, Open MPI with mpirun, pkg-config; no gRPC, PCRE2 or benchmark), unpacked with
# `dpkg -x` (nothing is installed), for a GPU machine whose image lacks them and has no network.
# scripts/gpu-check.sh uses it when it is there (it sources .gpu-sysroot/env.sh).
#
# Run here (Debian 12, apt reachable), then carry the folder:
#   bash scripts/gpu-sysroot.sh            # download, unpack, prune, self-test; prints the size
#   bash scripts/gpu-sysroot.sh --no-test  # skip the self-test
#   bash scripts/gpu-sysroot.sh --test-only # only the self-test, of the sysroot already there
#   bash scripts/gpu-sysroot.sh --deflate  # after sourcing .gpu-sysroot/env.sh here: drop the
#                                          # inflated libraries again (back to the carried size)
#   bash scripts/gpu-sysroot.sh --bare -- CMD ARGS...
#       # runs CMD where this host's own copies of those packages (and of gRPC, PCRE2, benchmark)
#       # are hidden (a private mount namespace; root): what a bare GPU image has, as far as
#       # this machine can show it. E.g. `--bare -- bash scripts/gpu-check.sh --dry-run`.
# device: run(command="bash scripts/gpu-check.sh", carry=[".gpu-sysroot"], timeout_s=480)
#
# What goes in: the packages below plus their dependency closure (as apt resolves it on an empty
# system, no recommends), minus SKIP: what a CUDA image on Ubuntu 24.04 already has (libc,
# libstdc++, gcc, binutils, zlib, OpenSSL, ...) or what is not needed to build and run on one
# node (RDMA/InfiniBand/UCX/libfabric transports, X11, hwloc plugins, docs). Libraries of the base
# system are not shipped (their newer Ubuntu versions are used); the -dev symlinks that point at
# them (libz.so) are pointed at the system's copy instead.
# The device tool carries at most 64 MiB of working tree: the result is pruned (docs, man pages,
# static archives except gtest/gmock, Fortran, OpenSHMEM, LAPACK) and its large libraries are
# xz-compressed (env.sh inflates them on the device): about 20 MiB.
# Env: GPU_SYSROOT (default ./.gpu-sysroot), GPU_SYSROOT_DEBS (download cache,
#      default /tmp/gpu-sysroot-debs).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SR=${GPU_SYSROOT:-$ROOT/.gpu-sysroot}
DEBS=${GPU_SYSROOT_DEBS:-/tmp/gpu-sysroot-debs}
MA=x86_64-linux-gnu
LIB=$SR/usr/lib/$MA
RUN_TEST=1
TEST_ONLY=0
DEFLATE_ONLY=0
BARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-test) RUN_TEST=0 ;;
    --deflate) DEFLATE_ONLY=1 ;;
    --test-only) TEST_ONLY=1 ;;
    --bare)
      if [ "${2:-}" != -- ] || [ $# -lt 3 ]; then
        echo "gpu-sysroot: usage: --bare -- CMD [ARGS...]" >&2; exit 2
      fi
      BARE=1; shift 2; break ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "gpu-sysroot: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "gpu-sysroot: error: $*" >&2; exit 1; }
log() { echo "gpu-sysroot: $*"; }
deflate() { # removes the inflated copies env.sh made, so the folder is back to its carried size
  find "$SR/usr" -name '*.xz' -type f | while IFS= read -r z; do rm -f "${z%.xz}"; done
}
report_size() {
  local mib
  mib=$(du -sm --apparent-size "$SR" | cut -f1)
  log "size to carry: ${mib} MiB in $(find "$SR" -type f | wc -l) files ($SR)"
  [ "$mib" -le 40 ] || log "warning: over 40 MiB; the device tool carries 64 MiB with the repo"
}
if [ "$DEFLATE_ONLY" = 1 ] || [ "$TEST_ONLY" = 1 ]; then
  [ -f "$SR/env.sh" ] || die "no sysroot at $SR (run without --deflate/--test-only first)"
fi
if [ "$DEFLATE_ONLY" = 1 ]; then
  deflate; report_size; exit 0
fi

# What the GPU-only build needs (scripts/install-deps.sh's list less gRPC, PCRE2 and benchmark),
# and pkg-config.
TOP=(
  libabsl-dev
  libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libopenblas-dev
  libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin openmpi-common libopenmpi3
  pkgconf
)
# What only the service needs: not shipped, but hidden by --bare too (to show it is not needed).
SERVICE_ONLY=(libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libpcre2-dev libbenchmark-dev)
# In the dependency closure but not shipped. Base system / toolchain (present on the GPU image):
SKIP_BASE=(
  adduser autoconf automake autotools-dev binutils binutils-common binutils-x86-64-linux-gnu
  cpp-12 debconf debianutils dpkg gcc-12 gcc-12-base gfortran-12 libacl1 libasan8 libatomic1
  libaudit-common libaudit1 libbinutils libbsd0 libbz2-1.0 libc-dev-bin libc6 libc6-dev
  libcap-ng0 libcbor0.8 libcc1-0 libcom-err2 libcrypt-dev libcrypt1 libctf-nobfd0 libctf0
  libdb5.3 libedit2 libfido2-1 libgcc-12-dev libgcc-s1 libgdbm-compat4 libgdbm6
  libgfortran-12-dev libgmp10 libgomp1 libgprofng0 libgssapi-krb5-2 libisl23 libitm1
  libjansson4 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 liblsan0 liblzma5 libmd0
  libmpc3 libmpfr6 libnsl-dev libnsl2 libpam-modules libpam-modules-bin libpam0g libperl5.36
  libselinux1 libsemanage-common libsemanage2 libsepol2 libssl3 libstdc++6 libtinfo6
  libtirpc-common libtirpc-dev libtirpc3 libtsan2 libubsan1 libudev1 libuuid1 linux-libc-dev m4
  openssh-client passwd perl perl-base perl-modules-5.36 rpcsvc-proto tar zlib1g libzstd1
)
# Not needed to build, or to run on one node: network transports of Open MPI (their components
# are removed below), hwloc plugins (X11, OpenCL, NVML...), test-framework sources, headers of
# Open MPI's own dependencies, pcre2 widths other than 8 bits.
SKIP_OPTIONAL=(
  catch2 googletest ibverbs-providers libibverbs1 libibverbs-dev librdmacm1 libfabric1 libucx0
  libpsm-infinipath1 libpsm2-2 libnl-3-200 libnl-3-dev libnl-route-3-200 libnl-route-3-dev
  libnuma1 libnuma-dev libhwloc-dev libhwloc-plugins libxml2 libicu72 libx11-6 libx11-data
  libxau6 libxcb1 libxdmcp6 libxext6 libxnvctrl0 ocl-icd-libopencl1 libpciaccess0
  libjs-jquery libjs-jquery-ui libltdl-dev libltdl7 libevent-dev libevent-2.1-7
  libevent-extra-2.1-7 libevent-openssl-2.1-7 libpmix-dev libpcre2-16-0 libpcre2-32-0
  libpcre2-posix3
)

# Shared libraries every GPU image has (glibc, gcc's runtime, zlib, OpenSSL, ...): an ELF file of
# the sysroot may need these; anything else it needs must be in the sysroot.
BASE_SONAMES=" linux-vdso.so.1 ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0
  librt.so.1 libutil.so.1 libresolv.so.2 libstdc++.so.6 libgcc_s.so.1 libgomp.so.1 libatomic.so.1
  libz.so.1 libssl.so.3 libcrypto.so.3 libzstd.so.1 liblzma.so.5 libbz2.so.1.0 libudev.so.1 "
missing_needed() { # prints the first NEEDED library of ELF file $1 found neither in BASE_SONAMES
  local need # nor in the sysroot; false when there is none
  for need in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case "$BASE_SONAMES" in *" $need "*) continue ;; esac
    [ -n "$(find "$SR/usr/lib" -name "$need" -print -quit)" ] || { echo "$need"; return 0; }
  done
  return 1
}

# resolve PKG...: KEEP = their closure as apt would install it on an empty system, less SKIP.
resolve() {
  local closure p empty_status
  empty_status=$(mktemp)
  closure=$(apt-get -s -o Dir::State::status="$empty_status" -o APT::Install-Recommends=false \
    install "$@" 2>&1 | awk '/^Inst /{print $2}' | sed 's/:amd64$//' | sort -u)
  rm -f "$empty_status"
  [ -n "$closure" ] || die "apt could not resolve: $*"
  declare -A skip=()
  for p in "${SKIP_BASE[@]}" "${SKIP_OPTIONAL[@]}"; do skip[$p]=1; done
  KEEP=()
  for p in $closure; do
    [ -n "${skip[$p]:-}" ] || KEEP+=("$p")
  done
  CLOSURE_SIZE=$(wc -w <<<"$closure")
}
apt_ready() {
  [ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || die "needs a Debian amd64 machine (the GPU machine is x86-64)"
  if ! apt-cache show libabsl-dev >/dev/null 2>&1; then
    log "apt lists missing: apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
  fi
}

# --- --bare: CMD with this host's copies of the packages hidden -------------------------------------
# In a private mount namespace (nothing outside it changes): every directory that holds only
# files of those packages is covered by an empty tmpfs, every other file of theirs by a one-line
# file that fails to compile, link or run. Host tools' own libraries stay (PCRE2's runtime: grep).
if [ "$BARE" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "--bare needs root (a private mount namespace)"
  command -v unshare >/dev/null 2>&1 || die "--bare needs unshare (util-linux)"
  apt_ready
  resolve "${TOP[@]}" "${SERVICE_ONLY[@]}"
  hide=()
  for p in "${KEEP[@]}"; do
    [ "$p" != libpcre2-8-0 ] && dpkg -s "$p" >/dev/null 2>&1 && hide+=("$p")
  done
  work=$(mktemp -d /tmp/gpu-sysroot-bare.XXXXXX)
  printf '#error hidden by scripts/gpu-sysroot.sh --bare: not on a bare GPU image\n' >"$work/hidden"
  # shellcheck disable=SC2016
  dpkg -L "${hide[@]}" | python3 -c '
import os, sys
paths = sorted({p.rstrip("\n") for p in sys.stdin if p.startswith("/usr/")})
files = {p for p in paths if os.path.islink(p) or os.path.isfile(p)}
dirs = sorted((p for p in paths if os.path.isdir(p) and not os.path.islink(p)),
              key=lambda d: -d.count("/"))
full = set()
for d in dirs:  # deepest first: a folder is hidden whole when all it holds is hidden
    if d.count("/") < 3:
        continue  # never /usr/include, /usr/lib, /usr/bin themselves
    entries = [os.path.join(d, e) for e in os.listdir(d)]
    if entries and all(e in files or e in full for e in entries):
        full.add(d)
top = sorted(d for d in full if os.path.dirname(d) not in full)
with open(sys.argv[1] + "/dirs", "w") as f:
    f.write("".join(d + "\n" for d in top))
with open(sys.argv[1] + "/files", "w") as f:
    for p in sorted(files):
        if not os.path.islink(p) and not any(p.startswith(d + "/") for d in top):
            f.write(p + "\n")
' "$work" || die "--bare: cannot list the files to hide"
  log "--bare: hiding ${#hide[@]} packages of this host ($(wc -l <"$work/dirs") folders," \
    "$(wc -l <"$work/files") files): ${hide[*]}"
  # shellcheck disable=SC2016
  exec unshare -m --propagation private bash -c '
    w=$1; shift
    while IFS= read -r d; do mount -t tmpfs -o size=64k,mode=755 gpu-sysroot-bare "$d" || exit 1; done <"$w/dirs"
    while IFS= read -r f; do mount --bind "$w/hidden" "$f" || exit 1; done <"$w/files"
    rm -rf "$w"
    exec "$@"' bash "$work" "$@"
fi

# --- 1. resolve: the closure as apt would install it on an empty system ---------------------------
if [ "$TEST_ONLY" = 0 ]; then
apt_ready
grep -q 'VERSION_ID="12"' /etc/os-release 2>/dev/null ||
  log "warning: not Debian 12; the packages will be this distribution's, not bookworm's"
resolve "${TOP[@]}"
log "${#KEEP[@]} packages to unpack (closure $CLOSURE_SIZE, skipped the rest): ${KEEP[*]}"

# --- 2. download (cached) -------------------------------------------------------------------------
mkdir -p "$DEBS" || die "cannot create $DEBS"
(cd "$DEBS" && apt-get download -q "${KEEP[@]}" >/dev/null) || die "apt-get download failed (in $DEBS)"

# --- 3. unpack ------------------------------------------------------------------------------------
rm -rf "$SR"
mkdir -p "$SR"
: >"$SR/MANIFEST"
for p in "${KEEP[@]}"; do
  v=$(apt-cache policy "$p" | awk '/Candidate:/{print $2}')
  f=$(compgen -G "$DEBS/${p}_${v//:/%3a}_*.deb" | head -1)
  [ -n "$f" ] || die "no .deb for $p $v in $DEBS"
  dpkg -x "$f" "$SR" || die "dpkg -x $f failed"
  echo "$p $v" >>"$SR/MANIFEST"
done

# --- 4. what dpkg's alternatives would have linked --------------------------------------------------
# OpenBLAS (pthread flavour) as the default BLAS.
alt() { # alt LINK TARGET: a relative symlink LINK -> TARGET (both inside the sysroot)
  mkdir -p "$(dirname "$SR/$1")"
  ln -sfn "$(realpath -m --relative-to="$(dirname "$SR/$1")" "$SR/$2")" "$SR/$1"
}
OB=usr/lib/$MA/openblas-pthread
OBI=usr/include/$MA/openblas-pthread
alt "usr/lib/$MA/libopenblas.so.0" "$OB/libopenblas.so.0"
alt "usr/lib/$MA/libopenblas.so" "$OB/libopenblas.so"
alt "usr/lib/$MA/pkgconfig/openblas.pc" "$OB/pkgconfig/openblas.pc"
alt "usr/lib/$MA/cmake/openblas/OpenBLASConfig.cmake" "$OB/cmake/openblas/OpenBLASConfig.cmake"
alt "usr/lib/$MA/cmake/openblas/OpenBLASConfigVersion.cmake" \
  "$OB/cmake/openblas/OpenBLASConfigVersion.cmake"
for h in cblas.h f77blas.h openblas_config.h; do alt "usr/include/$MA/$h" "$OBI/$h"; done
alt "usr/include/$MA/cblas-openblas.h" "$OBI/cblas.h"
# Open MPI as the default MPI.
for b in mpicc mpicxx mpic++ mpiCC mpirun mpiexec; do alt "usr/bin/$b" "usr/bin/$b.openmpi"; done
alt "usr/include/$MA/mpi" "usr/lib/$MA/openmpi/include"
alt "usr/lib/$MA/libmpi.so" "usr/lib/$MA/openmpi/lib/libmpi.so"
alt "usr/lib/$MA/libmpi++.so" "usr/lib/$MA/openmpi/lib/libmpi_cxx.so"
for pc in mpi:ompi mpi-c:ompi-c mpi-cxx:ompi-cxx; do
  alt "usr/lib/$MA/pkgconfig/${pc%%:*}.pc" "usr/lib/$MA/pkgconfig/${pc#*:}.pc"
done
# pkgconf's package ships the pkg-config name only as an alternative in some versions.
[ -e "$SR/usr/bin/pkg-config" ] || alt usr/bin/pkg-config usr/bin/pkgconf


# --- 5. prune -------------------------------------------------------------------------------------
before=$(du -sm --apparent-size "$SR" | cut -f1)
rm -rf "$SR"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion,gdb,aclocal,doc-base} \
  "$SR"/usr/share/openmpi/amca-param-sets "$SR"/etc/ld.so.conf.d "$LIB"/fortran
# Static archives: the shared libraries are used, except where a CMake package file names the
# archive (gtest, gmock, benchmark_main: Debian ships those static only).
cmake_files=$(find "$SR" -name '*.cmake')
while IFS= read -r a; do
  # shellcheck disable=SC2086
  grep -qF "/$(basename "$a")" $cmake_files 2>/dev/null || rm -f "$a"
done < <(find "$SR" -name '*.a')
# Only OpenBLAS itself: the reference-named BLAS/LAPACK copies are unused (7 MB).
rm -f "$LIB"/openblas-pthread/{libblas,liblapack}.so* "$LIB"/openblas-pthread/pkgconfig/{blas,lapack}-openblas.pc
# Open MPI: Fortran and Java bindings, OpenSHMEM, tracing, and the wrappers of other languages.
rm -f "$LIB"/{libmpi_mpifh,libmpi_usempi,liboshmem,libmpi_java,libompitrace}*.so* \
  "$LIB"/openmpi/lib/*.mod "$LIB"/openmpi/lib/mpi.jar "$LIB"/openmpi/include/{mpif,pshmem,shmem}*.h* \
  "$LIB"/openmpi/lib/openmpi3/mca_{scoll,spml,sshmem,atomic,memheap}_*.so
rm -rf "$LIB"/openmpi/include/openmpi/oshmem
rm -f "$SR"/usr/bin/{mpif77,mpif90,mpifort,mpijavac,osh,shmem}* \
  "$SR"/usr/bin/{oshmem_info,aggregate_profile,profile2mat,orte-server,ompi-server}
# Open MPI / PMIx plugins that need a library not shipped (RDMA, UCX, libfabric, PSM, netlink):
# mpirun would try to load each and warn. On one node, shared memory (vader), self and TCP remain.
removed=()
for _ in 1 2; do # twice: a plugin may need a common library removed in the first pass
  while IFS= read -r so; do
    if need=$(missing_needed "$so"); then removed+=("$(basename "$so"):$need"); rm -f "$so"; fi
  done < <(find "$LIB"/libmca_common_* "$LIB/openmpi/lib" "$LIB/pmix2/lib/pmix" -name '*.so*' ! -type l 2>/dev/null)
done
[ "${#removed[@]}" -eq 0 ] || log "removed Open MPI/PMIx plugins needing a library not shipped: ${removed[*]}"
# Symlinks: absolute ones made relative (inside the sysroot) ...
while IFS= read -r l; do
  t=$(readlink "$l")
  case "$t" in /*) ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$SR$t")" "$l" ;; esac
done < <(find "$SR" -type l)
# ... and dangling ones: the dev links of base-system libraries point at the system's copy (same
# path on Debian and Ubuntu); anything else dangling was pruned on purpose and goes.
for base in libz.so:libz.so.1 libssl.so:libssl.so.3 libcrypto.so:libcrypto.so.3; do
  [ -L "$LIB/${base%%:*}" ] && ln -sfn "/usr/lib/$MA/${base#*:}" "$LIB/${base%%:*}"
done
find "$SR" -xtype l ! -path "$LIB/libz.so" ! -path "$LIB/libssl.so" ! -path "$LIB/libcrypto.so" -delete
find "$SR" -depth -type d -empty -delete
pruned=$(du -sm --apparent-size "$SR" | cut -f1)
# Shared libraries over 256 KiB are stored xz-compressed (OpenBLAS alone is 35 MB, 4 MB as .xz):
# env.sh inflates them next to the .xz the first time it is sourced.
while IFS= read -r f; do
  xz -9e -T0 -c "$f" >"$f.xz" && touch -r "$f" "$f.xz" && rm -f "$f"
done < <(find "$SR/usr/lib" -type f -name '*.so*' ! -name '*.xz' -size +256k)

# --- 6. env.sh: what gpu-check.sh (or a shell) sources to build against the sysroot ---------------
cat >"$SR/env.sh" <<'EOF'
# Source me (bash): puts this sysroot (made by scripts/gpu-sysroot.sh) on the paths of CMake,
# pkg-config, the dynamic loader and Open MPI. GPU_SYSROOT_LD_LIBRARY_PATH is what was added
# to LD_LIBRARY_PATH (programs outside the project, python3 say, may want it left out).
GPU_SYSROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_ma=x86_64-linux-gnu
_lib=$GPU_SYSROOT/usr/lib/$_ma
export GPU_SYSROOT
# Libraries stored as FILE.xz (to keep the carried folder small) are inflated once, here.
_gpu_sysroot_inflate() {
  local z f n=0
  while IFS= read -r z; do
    f=${z%.xz}
    [ -e "$f" ] && continue
    if command -v xz >/dev/null 2>&1; then xz -dc "$z" >"$f.part"
    else python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' "$z" "$f.part"
    fi && chmod 755 "$f.part" && mv -f "$f.part" "$f" || { echo "env.sh: cannot inflate $z" >&2; rm -f "$f.part"; return 1; }
    n=$((n + 1))
  done < <(find "$GPU_SYSROOT/usr" -name '*.xz' -type f)
  [ "$n" = 0 ] || echo "env.sh: inflated $n libraries of $GPU_SYSROOT" >&2
}
_gpu_sysroot_inflate || return 1
export PATH=$GPU_SYSROOT/usr/bin${PATH:+:$PATH}
export CMAKE_PREFIX_PATH=$GPU_SYSROOT/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
# .pc files say prefix=/usr: pkg-config prepends the sysroot to their -I/-L paths.
export PKG_CONFIG_SYSROOT_DIR=$GPU_SYSROOT
export PKG_CONFIG_LIBDIR=$_lib/pkgconfig:$GPU_SYSROOT/usr/share/pkgconfig
unset PKG_CONFIG_PATH
GPU_SYSROOT_LD_LIBRARY_PATH=$_lib:$_lib/openmpi/lib:$_lib/openblas-pthread:$_lib/pmix2/lib
export GPU_SYSROOT_LD_LIBRARY_PATH
export LD_LIBRARY_PATH=$GPU_SYSROOT_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Open MPI and PMIx find their components, help texts and wrapper data under these prefixes.
export OPAL_PREFIX=$GPU_SYSROOT/usr
export PMIX_INSTALL_PREFIX=$_lib/pmix2
# What Debian's /etc/openmpi/openmpi-mca-params.conf says (that file is not there).
export OMPI_MCA_btl_base_warn_component_unused=0
export OMPI_MCA_mca_base_component_show_load_errors=0
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader,tcp}
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
export OMPI_MCA_osc=${OMPI_MCA_osc:-^ucx,pt2pt}
# mpirun refuses to start, even on one node, when its rsh/ssh launcher agent is not installed.
if ! command -v ssh >/dev/null 2>&1 && ! command -v rsh >/dev/null 2>&1; then
  export OMPI_MCA_plm_rsh_agent=${OMPI_MCA_plm_rsh_agent:-false}
fi
unset _ma _lib
unset -f _gpu_sysroot_inflate
EOF

log "unpacked ${before} MiB, pruned to ${pruned} MiB, large libraries xz-compressed:"
report_size
fi # TEST_ONLY

# --- 7. self-test: the tools run from the sysroot and CMake finds every package in it -----------
[ "$RUN_TEST" = 1 ] || exit 0
# Libraries already inflated (a build using this sysroot may be running) stay after the test.
was_inflated=0
for z in "$LIB"/*.xz; do [ -e "${z%.xz}" ] && was_inflated=1; break; done
# Where this machine allows (root, unshare), every check runs with this host's copies of the
# packages hidden (--bare), so that only the sysroot can answer.
BARE_RUN=()
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  BARE_RUN=(bash "$ROOT/scripts/gpu-sysroot.sh" --bare --)
  log "self-test with this host's copies of the packages hidden (--bare)"
else
  log "self-test with this host's copies visible (--bare needs root and unshare)"
fi
fail=0
in_sysroot() { # in_sysroot CMD: runs CMD in a clean environment + env.sh (host copies hidden)
  "${BARE_RUN[@]}" env -i HOME="$HOME" PATH=/usr/bin:/bin bash -c "source '$SR/env.sh' && $1"
}
check() { # check NAME CMD
  local name=$1 out
  if out=$(in_sysroot "$2" 2>&1); then
    log "ok: $name: $(grep -v '^gpu-sysroot: --bare' <<<"$out" | head -c 200 | tr '\n' ' ')"
  else
    log "FAILED: $name: $out"; fail=1
  fi
}
# The checks' commands expand inside the clean shell, hence single quotes.
# shellcheck disable=SC2016
check protoc 'protoc --version && [ "$(command -v protoc)" = "$GPU_SYSROOT/usr/bin/protoc" ]'
# shellcheck disable=SC2016
check pkg-config 'pkg-config --cflags --libs openblas | grep -q "$GPU_SYSROOT" && pkg-config --cflags --libs openblas'
# shellcheck disable=SC2016
check mpicxx 'mpicxx --showme | grep -q "$GPU_SYSROOT" && mpicxx --showme'
# Every ELF file's libraries are in the sysroot or in BASE_SONAMES.
nelf=0; unresolved=()
while IFS= read -r f; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  nelf=$((nelf + 1))
  if need=$(missing_needed "$f"); then unresolved+=("${f#"$SR"/}:$need"); fi
done < <(find "$SR/usr" -type f \( -name '*.so*' -o -perm -u+x \))
if [ "${#unresolved[@]}" -eq 0 ]; then log "ok: NEEDED libraries of $nelf ELF files all in the sysroot or the base system"
else log "FAILED: libraries not shipped: ${unresolved[*]}"; fail=1; fi
# CMake: a project with the find_package / pkg_check_modules calls of the GPU-only build, a
# protoc-generated message, gtest/gmock, and MPI run under the sysroot's mpirun.
t=$(mktemp -d)
cat >"$t/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(sysroot_probe LANGUAGES C CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
find_package(Protobuf REQUIRED)
find_package(GTest REQUIRED)
find_package(MPI REQUIRED COMPONENTS C CXX)
foreach(v absl_DIR nlohmann_json_DIR CLI11_DIR spdlog_DIR fmt_DIR GTest_DIR
    PKG_CONFIG_EXECUTABLE OPENBLAS_LINK_LIBRARIES Protobuf_LIBRARY Protobuf_INCLUDE_DIR
    Protobuf_PROTOC_EXECUTABLE MPI_CXX_LIBRARIES MPI_CXX_INCLUDE_DIRS MPIEXEC_EXECUTABLE)
  message(STATUS "probe ${v}=${${v}}")
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/probe.proto
  "syntax = \"proto3\";\npackage probe;\nmessage M { repeated int32 ids = 1; }\n")
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/probe.pb.cc ${CMAKE_BINARY_DIR}/probe.pb.h
  COMMAND protobuf::protoc --proto_path=${CMAKE_BINARY_DIR} --cpp_out=${CMAKE_BINARY_DIR}
    probe.proto
  DEPENDS ${CMAKE_BINARY_DIR}/probe.proto)
file(WRITE ${CMAKE_BINARY_DIR}/probe.cpp "
#include <absl/strings/str_cat.h>
#include <cblas.h>
#include <fmt/format.h>
#include <mpi.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include \"probe.pb.h\"
TEST(Probe, Links) {
  float a[4] = {1, 2, 3, 4}, b[2] = {1, 1}, c[2] = {0, 0};
  cblas_sgemv(CblasRowMajor, CblasNoTrans, 2, 2, 1.f, a, 2, b, 1, 0.f, c, 1);
  EXPECT_THAT(c, testing::ElementsAre(3.f, 7.f));
  EXPECT_EQ(absl::StrCat(fmt::format(\"{}\", 1), nlohmann::json(2).dump()), \"12\");
  probe::M m; m.add_ids(7); probe::M back;
  ASSERT_TRUE(back.ParseFromString(m.SerializeAsString())); EXPECT_EQ(back.ids(0), 7);
  int inited = 0; MPI_Initialized(&inited); EXPECT_EQ(inited, 1);
  int world = 0; MPI_Comm_size(MPI_COMM_WORLD, &world); EXPECT_EQ(world, 2);
  int sum = 0, one = 1; MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(sum, 2); spdlog::info(\"world {}\", world);
}
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv); testing::InitGoogleMock(&argc, argv);
  int r = RUN_ALL_TESTS(); MPI_Finalize(); return r;
}")
add_executable(probe ${CMAKE_BINARY_DIR}/probe.cpp ${CMAKE_BINARY_DIR}/probe.pb.cc)
target_include_directories(probe PRIVATE ${CMAKE_BINARY_DIR})
target_link_libraries(probe PRIVATE absl::strings PkgConfig::OPENBLAS fmt::fmt spdlog::spdlog
  nlohmann_json::nlohmann_json CLI11::CLI11 protobuf::libprotobuf GTest::gmock GTest::gtest
  MPI::MPI_CXX)
EOF
if in_sysroot "cmake -S '$t' -B '$t/b' -G Ninja -DCMAKE_BUILD_TYPE=Release >'$t/configure.log' 2>&1"; then
  bad=$(grep 'probe ' "$t/configure.log" | grep -v "$SR" || true)
  if [ -n "$bad" ]; then log "FAILED: cmake found these outside the sysroot:"; echo "$bad"; fail=1
  else log "ok: cmake configure: every probed package is in the sysroot"; fi
  if in_sysroot "cmake --build '$t/b' >'$t/build.log' 2>&1 &&
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none \
        mpirun --oversubscribe --bind-to none -np 2 '$t/b/probe' >'$t/run.log' 2>&1"; then
    log "ok: probe (a protoc message, gtest/gmock, OpenBLAS, MPI_Allreduce) built and ran under" \
      "the sysroot's mpirun -np 2 ($(grep -c 'PASSED' "$t/run.log") ranks passed)"
  else
    log "FAILED: probe build/run:"; tail -n 30 "$t/build.log" "$t/run.log"; fail=1
  fi
else
  log "FAILED: cmake configure:"; tail -40 "$t/configure.log"; fail=1
fi
rm -rf "$t"
[ "$was_inflated" = 1 ] || deflate
if [ "$fail" = 0 ]; then log "self-test passed"; else log "self-test FAILED"; fi
report_size
exit "$fail"
