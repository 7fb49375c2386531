#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-server from the llama.cpp that PyPI's llama-cpp-python sdist vendors, for
# side-by-side comparisons (scripts/compare.sh). Everything lives under a cache directory (default .cache/llama.cpp,
# git-ignored) and is reused by later runs.
#   scripts/build-llama.sh [--cache DIR] [--version V] [--compiler auto|clang|gcc] [--model GGUF] [--jobs N]
# Builds with native CPU flags (GGML_NATIVE=ON, i.e. -march=native) and OpenMP, once with Debian's clang-16 (when
# installed: `scripts/setup.sh --bench`) and once with gcc; on a CPU with AMX, gcc gets -mno-amx-* (gcc 12 drops AMX
# tile-configuration stores and llama.cpp's AMX path dies of SIGILL). With --compiler auto (the default) both are
# built, each is timed with short llama-bench runs on MODEL (1 thread, three rounds alternating the builds, median),
# and the faster one that works is selected. The trial is short: on a busy machine, pick by hand with --compiler.
# Writes DIR/selected.env (LLAMA_BIN, LLAMA_COMPILER, LLAMA_FLAGS, LLAMA_VERSION, LLAMA_COMMIT, LLAMA_TRIAL) and
# prints LLAMA_BIN: the directory holding llama-bench and llama-server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache/llama.cpp
version=0.3.36
compiler=auto
model=$root/models/SmolLM2-135M-Instruct.Q4_1.gguf
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --compiler) compiler=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build-llama: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "build-llama: $*" >&2; }

# ---- the source: llama-cpp-python's sdist, its vendor/llama.cpp ----
mkdir -p "$cache/dl"
src=$cache/src-$version
if [ ! -f "$src/CMakeLists.txt" ]; then
  sdist=$cache/dl/llama_cpp_python-$version.tar.gz
  if [ ! -f "$sdist" ]; then
    log "downloading llama-cpp-python $version (sdist) from PyPI"
    python3 -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$cache/dl" >&2
  fi
  tmp=$(mktemp -d "$cache/extract.XXXXXX")
  tar -xzf "$sdist" -C "$tmp"
  rm -rf "$src"
  mv "$tmp"/llama_cpp_python-"$version"/vendor/llama.cpp "$src"
  rm -rf "$tmp"
fi
# The vendored commit: the sdist carries the submodule's git directory, whose HEAD names it. (The source's own .git
# file points into the sdist and stays broken on purpose: git must not find the enclosing repository instead.)
if [ ! -s "$src/.sdist-commit" ]; then
  tar -xzOf "$cache/dl/llama_cpp_python-$version.tar.gz" "llama_cpp_python-$version/.git/modules/vendor/llama.cpp/HEAD" \
    2>/dev/null | cut -c1-12 >"$src/.sdist-commit" || true
fi
commit=$(cat "$src/.sdist-commit" 2>/dev/null)
commit=${commit:-unknown}

# ---- one build per compiler ----
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has_cpu() { [[ " $cpu_flags " == *" $1 "* ]]; }

# build VARIANT: configures and builds into $cache/build-VARIANT-$version; records the flags in its flags.txt
build() {
  local variant=$1 cc cxx extra=""
  case $variant in
    clang) cc=clang-16; cxx=clang++-16 ;;
    gcc) cc=gcc; cxx=g++
      if has_cpu amx_tile; then extra="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi ;;
  esac
  command -v "$cxx" >/dev/null || { log "$variant: $cxx not installed (scripts/setup.sh --bench)"; return 1; }
  local dir=$cache/build-$variant-$version
  if [ -x "$dir/bin/llama-bench" ] && [ -x "$dir/bin/llama-server" ] && [ -f "$dir/flags.txt" ]; then return 0; fi
  local args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx"
              -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF
              -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
              -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
              -DLLAMA_CURL=OFF)
  if [ -n "$extra" ]; then args+=(-DCMAKE_C_FLAGS="$extra" -DCMAKE_CXX_FLAGS="$extra"); fi
  log "$variant: configuring and building llama-bench, llama-server in $dir (minutes)"
  mkdir -p "$dir"
  if ! cmake -S "$src" -B "$dir" "${args[@]}" >"$dir/configure.log" 2>&1 ||
     ! cmake --build "$dir" -j "$jobs" --target llama-bench llama-server >"$dir/build.log" 2>&1; then
    log "$variant: build failed; see $dir/configure.log and $dir/build.log"
    tail -n 5 "$dir/build.log" 2>/dev/null >&2 || true
    return 1
  fi
  {
    echo "compiler: $("$cxx" --version | head -n1)"
    echo "cmake: ${args[*]}"
    echo "CMAKE_C_FLAGS_RELEASE: $(grep -m1 '^CMAKE_C_FLAGS_RELEASE:' "$dir/CMakeCache.txt" | cut -d= -f2-)"
    echo "native flags: -march=native (GGML_NATIVE=ON)${extra:+ $extra}"
  } >"$dir/flags.txt"
}

# trial VARIANT: tokens/s of a short llama-bench (geometric mean of pp64 and tg32, 1 thread); fails if it crashes
trial() {
  local dir=$cache/build-$1-$version out
  out=$("$dir/bin/llama-bench" -m "$model" -p 64 -n 32 -r 1 -t 1 -o json 2>"$dir/trial.log") || return 1
  python3 -c '
import json, math, sys
runs = json.loads(sys.argv[1])
print(round(math.exp(sum(math.log(r["avg_ts"]) for r in runs) / len(runs)), 1))' "$out"
}

case $compiler in
  auto) variants=(clang gcc) ;;
  clang|gcc) variants=("$compiler") ;;
  *) echo "build-llama: --compiler auto|clang|gcc" >&2; exit 2 ;;
esac
built=()
for v in "${variants[@]}"; do
  if build "$v"; then built+=("$v"); fi
done
best="" best_score=0 trials=""
if [ ${#built[@]} -eq 1 ] && [ "$compiler" != auto ]; then
  best=${built[0]}
elif [ ${#built[@]} -gt 0 ]; then
  declare -A scores=()
  for round in 1 2 3; do
    for v in "${built[@]}"; do
      if [ "${scores[$v]:-}" = failed ]; then continue; fi
      if score=$(trial "$v"); then
        scores[$v]+="$score "
      else
        log "$v: llama-bench failed on $model (see $cache/build-$v-$version/trial.log)"
        scores[$v]=failed
      fi
    done
  done
  for v in "${built[@]}"; do
    if [ "${scores[$v]}" = failed ]; then trials+="$v=failed "; continue; fi
    score=$(python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" ${scores[$v]})
    log "$v: trial $score tok/s (median of ${scores[$v]% }: geometric mean of pp64 and tg32, 1 thread)"
    trials+="$v=$score "
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$score" "$best_score"; then
      best=$v best_score=$score
    fi
  done
fi
[ -n "$best" ] || { log "no llama.cpp build works"; exit 1; }
dir=$cache/build-$best-$version
{
  echo "LLAMA_BIN='$dir/bin'"
  echo "LLAMA_VERSION='llama-cpp-python $version (vendored llama.cpp $commit)'"
  echo "LLAMA_COMPILER='$(sed -n 's/^compiler: //p' "$dir/flags.txt")'"
  echo "LLAMA_FLAGS='$(sed -n 's/^native flags: //p' "$dir/flags.txt"), $(sed -n 's/^CMAKE_C_FLAGS_RELEASE: //p' "$dir/flags.txt"), OpenMP, static'"
  echo "LLAMA_TRIAL='${trials% }'"
} >"$cache/selected.env"
log "selected: $best ($dir/bin)"
echo "$dir/bin"
