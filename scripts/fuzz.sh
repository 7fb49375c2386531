#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp) with clang, ASan and UBSan into build-fuzz and runs each.
#   scripts/fuzz.sh [SECONDS]   run each fuzzer for SECONDS (default 60); exits non-zero when a crash, leak, timeout
#                               or out-of-memory input is found (saved under build-fuzz/artifacts/NAME/)
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (build parallelism, default nproc).
# Seeds for fuzz_gguf: small valid GGUF files from tests/fuzz/make_seeds.py (Python's struct module) and, when
# present, the default model's first 64 KiB. Each fuzzer's corpus grows in build-fuzz/corpus/NAME between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p "$build"
cmake -S . -B "$build" -DTROUPE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DTROUPE_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
failed=0
for src in tests/fuzz/fuzz_*.cpp; do
  name=$(basename "$src" .cpp)
  bin="$build/$name"
  if ! cmake --build "$build" --target "$name" -j "${FUZZ_JOBS:-$(nproc)}" >"$build/$name.build.log" 2>&1; then
    # The CMake target links all of troupe_core; when some core file does not build with clang, fuzz the loader
    # alone (it needs only gguf.cpp and error.cpp) rather than not at all, and say so loudly.
    grep -E "error:" "$build/$name.build.log" | head -n 5 || true
    if [ "$name" != fuzz_gguf ]; then
      echo "fuzz: $name does not build (see $build/$name.build.log)" >&2
      failed=1
      continue
    fi
    echo "fuzz: WARNING: the CMake build of $name failed (see $build/$name.build.log); building the loader alone" >&2
    clang++ -std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
      -Isrc "$src" src/gguf.cpp src/error.cpp -o "$bin"
  fi

  seeds="$build/seeds/$name"
  corpus="$build/corpus/$name"
  artifacts="$build/artifacts/$name"
  rm -rf "$seeds"
  mkdir -p "$seeds" "$corpus" "$artifacts"
  if [ "$name" = fuzz_gguf ]; then
    python3 tests/fuzz/make_seeds.py "$seeds" "$model"
  fi

  # Every seed must load or fail cleanly before fuzzing starts.
  "$bin" -runs=0 "$seeds" >"$build/$name.seeds.log" 2>&1 || { cat "$build/$name.seeds.log"; failed=1; continue; }

  # -malloc_limit_mb: no input of at most 64 KiB may ask for 64 MiB in one allocation (the loader's allocations are
  # proportionate to the file; anything else is an amplification bug).
  echo "fuzz: running $name for ${seconds}s"
  set +e
  "$bin" "$corpus" "$seeds" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=64 -max_len=65536 -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$build/$name.log" 2>&1
  rc=$?
  set -e
  grep -E "^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" \
    "$build/$name.log" || true
  if [ $rc -ne 0 ]; then
    tail -n 60 "$build/$name.log"
    echo "fuzz: $name failed (exit $rc); reproducer(s) in $artifacts: $(ls "$artifacts" | tr '\n' ' ')"
    failed=1
  fi
done

if [ $failed -ne 0 ]; then
  echo "fuzz: FAILED"
  exit 1
fi
echo "fuzz: no crash found"
