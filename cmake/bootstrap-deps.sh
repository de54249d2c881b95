#!/usr/bin/env bash
# Installs what moeproxy needs on a Debian 12 machine and builds Kokkos + Kokkos Kernels
# 3.4.01 (from Debian's trilinos source package) into .deps/<variant>.
# Idempotent: a second run finds everything and returns in seconds.
#
# usage: cmake/bootstrap-deps.sh [host|cuda]...   (default: host)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deps=${MOEPROXY_DEPS:-$root/.deps}
jobs=${MOEPROXY_JOBS:-$(nproc)}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(host)

log() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

packages=(mpich libmpich-dev libhdf5-mpich-dev hdf5-tools catch2 libcli11-dev
          libtomlplusplus-dev libopenblas-dev ninja-build cmake g++ dpkg-dev xz-utils
          python3-h5py python3-numpy python3-matplotlib slurm-wlm munge)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages: all present"; return; }
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The deb-src entry reuses the archive URI this machine's apt already uses, read from its
# own configuration, so that no registry host is ever written into the repository.
debian_uri() {
  local f uri=""
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "cannot find a Debian archive URI in /etc/apt to fetch trilinos sources from"
  echo "$uri"
}

fetch_sources() {
  local src=$deps/src
  if [ -d "$src/kokkos" ] && [ -d "$src/kokkos-kernels" ]; then return; fi
  mkdir -p "$src/apt/lists/partial"
  local tarball
  tarball=$(ls "$src"/trilinos_*.orig.tar.* 2>/dev/null | head -1 || true)
  if [ -z "$tarball" ]; then
    local uri list=$src/apt/sources.list
    uri=$(debian_uri)
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm main" > "$list"
    local opts=(-o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=-"
                -o "Dir::State::Lists=$src/apt/lists" -o "APT::Get::List-Cleanup=0")
    log "fetching the trilinos source package (Kokkos 3.4.01 lives inside it)"
    apt-get "${opts[@]}" update -qq
    (cd "$src" && apt-get "${opts[@]}" source --download-only -qq trilinos)
    tarball=$(ls "$src"/trilinos_*.orig.tar.* | head -1)
  fi
  log "extracting packages/kokkos and packages/kokkos-kernels"
  local tmp=$src/extract
  rm -rf "$tmp" && mkdir -p "$tmp"
  tar -C "$tmp" -xf "$tarball" --wildcards '*/packages/kokkos/*' '*/packages/kokkos-kernels/*'
  mv "$tmp"/*/packages/kokkos "$src/kokkos"
  mv "$tmp"/*/packages/kokkos-kernels "$src/kokkos-kernels"
  rm -rf "$tmp"
}

# CUDA 13 and Hopper need four edits to Kokkos 3.4.01 (docs/TOOLCHAIN in shared/ explains
# each); they are applied to a separate copy so the host build stays pristine.
patch_for_cuda() {
  local k=$deps/src/kokkos-cuda
  [ -f "$k/.moeproxy-patched" ] && return
  rm -rf "$k" && cp -r "$deps/src/kokkos" "$k"
  python3 "$root/cmake/patch-kokkos-cuda.py" "$k"
  touch "$k/.moeproxy-patched"
}

build_one() { # name srcdir prefix cmake-args...
  local name=$1 srcdir=$2 prefix=$3; shift 3
  local bdir=$deps/build/$(basename "$prefix")-$name
  log "building $name into $prefix"
  rm -rf "$bdir" && mkdir -p "$(dirname "$bdir")"
  cmake -S "$srcdir" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_CXX_STANDARD=17 "$@" > "$bdir.log" 2>&1 \
    || { tail -40 "$bdir.log"; die "configuring $name failed (log: $bdir.log)"; }
  cmake --build "$bdir" -j "$jobs" >> "$bdir.log" 2>&1 \
    && cmake --install "$bdir" >> "$bdir.log" 2>&1 \
    || { tail -40 "$bdir.log"; die "building $name failed (log: $bdir.log)"; }
  rm -rf "$bdir"
}

kk_header_only=(-DKokkosKernels_ADD_DEFAULT_ETI=OFF -DKokkosKernels_INST_DOUBLE=OFF
  -DKokkosKernels_INST_FLOAT=OFF -DKokkosKernels_INST_COMPLEX_DOUBLE=OFF
  -DKokkosKernels_INST_COMPLEX_FLOAT=OFF -DKokkosKernels_INST_OFFSET_INT=OFF
  -DKokkosKernels_INST_OFFSET_SIZE_T=OFF -DKokkosKernels_INST_ORDINAL_INT=OFF
  -DKokkosKernels_INST_LAYOUTLEFT=OFF -DKokkosKernels_INST_LAYOUTRIGHT=OFF
  -DKokkosKernels_ENABLE_TESTS=OFF -DKokkosKernels_ENABLE_EXAMPLES=OFF)

build_host() {
  local prefix=$deps/host
  [ -f "$prefix/.complete" ] && { log "host Kokkos: present in $prefix"; return; }
  fetch_sources
  build_one kokkos "$deps/src/kokkos" "$prefix" -DCMAKE_CXX_COMPILER=g++ \
    -DKokkos_ENABLE_SERIAL=ON -DKokkos_ENABLE_OPENMP=ON
  build_one kokkos-kernels "$deps/src/kokkos-kernels" "$prefix" -DCMAKE_CXX_COMPILER=g++ \
    -DKokkos_ROOT="$prefix" -DKokkosKernels_ENABLE_TPL_BLAS=ON "${kk_header_only[@]}"
  touch "$prefix/.complete"
}

build_cuda() {
  local prefix=$deps/cuda
  [ -f "$prefix/.complete" ] && { log "CUDA Kokkos: present in $prefix"; return; }
  local cuda_home=${CUDA_HOME:-/usr/local/cuda}
  [ -x "$cuda_home/bin/nvcc" ] || die "nvcc not found under $cuda_home (set CUDA_HOME)"
  export PATH=$cuda_home/bin:$PATH
  fetch_sources
  patch_for_cuda
  local wrapper=$deps/src/kokkos-cuda/bin/nvcc_wrapper
  build_one kokkos "$deps/src/kokkos-cuda" "$prefix" -DCMAKE_CXX_COMPILER="$wrapper" \
    -DCMAKE_CXX_FLAGS=-arch=sm_90 -DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_CUDA_LAMBDA=ON \
    -DKokkos_ENABLE_OPENMP=ON -DKokkos_ENABLE_SERIAL=ON -DKokkos_ARCH_HOPPER90=ON
  build_one kokkos-kernels "$deps/src/kokkos-kernels" "$prefix" -DCMAKE_CXX_COMPILER="$wrapper" \
    -DCMAKE_CXX_FLAGS=-arch=sm_90 -DKokkos_ROOT="$prefix" \
    -DKokkosKernels_ENABLE_TPL_CUBLAS=ON -DKokkosKernels_ENABLE_TPL_CUSPARSE=OFF \
    "${kk_header_only[@]}"
  touch "$prefix/.complete"
}

install_packages
for v in "${variants[@]}"; do
  case $v in
    host) build_host ;;
    cuda) build_cuda ;;
    *) die "unknown variant '$v' (host or cuda)" ;;
  esac
done
