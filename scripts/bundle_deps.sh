#!/usr/bin/env bash
# Copies dslens's non-torch dependencies from this machine's Debian packages into
# third_party/bundle/ (git-ignored), for building on a machine that has CUDA, CMake and PyTorch's
# LibTorch but no package registry (e.g. the GPU node):
#   include/  cxxopts.hpp, spdlog/, fmt/, nlohmann/, fitsio.h and friends, zlib.h
#   lib/      libcfitsio and the shared libraries it needs (not glibc), libz
#   googletest/  the GoogleTest sources (built with the project)
# CMake picks the bundle up automatically when third_party/bundle/include/cxxopts.hpp exists.
# Carry third_party/bundle to the other machine with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null 2>&1 || true   # makes sure the packages are installed here
B=third_party/bundle
rm -rf "$B"
mkdir -p "$B/include" "$B/lib"
cp /usr/include/cxxopts.hpp "$B/include/"
cp -r /usr/include/spdlog /usr/include/fmt /usr/include/nlohmann "$B/include/"
cp /usr/include/fitsio.h /usr/include/fitsio2.h /usr/include/longnam.h /usr/include/zlib.h \
   /usr/include/zconf.h "$B/include/" 2>/dev/null || true
cp -r /usr/src/googletest "$B/googletest"
lib=$(readlink -f /usr/lib/x86_64-linux-gnu/libcfitsio.so)
cp "$lib" "$B/lib/"
ln -sf "$(basename "$lib")" "$B/lib/libcfitsio.so"
# The name the loader looks for (libcfitsio.so.10): without it the linked program does not start.
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
[[ -n $soname ]] && ln -sf "$(basename "$lib")" "$B/lib/$soname"
# Runtime dependencies of CFITSIO other than glibc's own libraries (libresolv & co. call private
# glibc symbols, so they must come from the target's glibc): curl and its TLS stack, bzip2, zlib.
ldd "$lib" | awk '/=> \//{print $3}' | grep -vE '/lib(c|m|pthread|dl|rt|resolv|util|nsl|anl)\.so' | while read -r dep; do
  cp -L "$dep" "$B/lib/"
done
zl=$(readlink -f /usr/lib/x86_64-linux-gnu/libz.so)
cp "$zl" "$B/lib/"; ln -sf "$(basename "$zl")" "$B/lib/libz.so"
du -sh "$B"
echo "bundle written to $B"
