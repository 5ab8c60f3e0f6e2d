#!/usr/bin/env bash
# Installs dslens's system dependencies (Debian 12 packages) and builds it in Release.
# Idempotent: packages already present are not reinstalled, and the build is incremental.
#   BUILD_DIR   build folder (default: build)
#   JOBS        parallel compile jobs (default: number of cores)
#   CMAKE_ARGS  extra arguments for cmake (e.g. -DCMAKE_PREFIX_PATH=... for a CUDA LibTorch)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build pkg-config libtorch-dev libcfitsio-dev libcxxopts-dev
          libspdlog-dev libfmt-dev nlohmann-json3-dev libgtest-dev libgloo-dev zlib1g-dev
          libopenblas0-pthread)

if [ -f third_party/bundle/include/cxxopts.hpp ]; then
  echo "setup: using bundled dependencies in third_party/bundle (no apt)"
else
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
GEN=()
command -v ninja >/dev/null && [ ! -f "$BUILD_DIR/Makefile" ] && GEN=(-G Ninja)
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup: built $BUILD_DIR/dslens"
