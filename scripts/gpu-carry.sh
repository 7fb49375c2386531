#!/usr/bin/env bash
# Prepares what a GPU machine needs for tests/gpu/device-check.sh: that machine has CUDA but no Debian packages and
# no network, so the binaries are built here (CUDA on) and carried with the shared libraries troupe needs that are
# not part of a base system. Writes .gpu-carry/ (git-ignored; a few MiB): troupe-gpu-check (CUDA runtime linked
# statically, needs only the driver), troupe and lib/.
#   scripts/gpu-carry.sh && tests/gpu/device-check.sh    # here the check reports itself skipped (no device)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${GPU_CARRY_BUILD:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target troupe troupe-gpu-check -j "$(nproc)"
rm -rf .gpu-carry
mkdir -p .gpu-carry/lib
cp "$build/troupe-gpu-check" "$build/troupe" .gpu-carry/
# every shared library troupe links except the C runtime and the loader, which the GPU machine has
ldd "$build/troupe" | awk '/=> \// {print $3}' | grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+)\.so' |
  while read -r lib; do cp -L "$lib" .gpu-carry/lib/; done
du -sh .gpu-carry
ls .gpu-carry .gpu-carry/lib
