#!/usr/bin/env bash
# Builds the GGUF loader's libFuzzer target with clang (ASan + UBSan) into build-fuzz and runs it.
#   scripts/fuzz.sh [SECONDS]   run for SECONDS (default 60); exits non-zero when a crash, leak, timeout or
#                               out-of-memory input is found (it is saved under build-fuzz/artifacts/)
# Seeds: small valid GGUF files from tests/fuzz/make_seeds.py and, when present, the default model's first 64 KiB.
# The corpus grows in build-fuzz/corpus between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=build-fuzz
model=models/SmolLM2-135M-Instruct.Q4_1.gguf

cmake -S . -B "$build" -DTROUPE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DTROUPE_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if ! cmake --build "$build" --target fuzz_gguf -j "${FUZZ_JOBS:-$(nproc)}" >"$build/build.log" 2>&1; then
  # The CMake target links all of troupe_core; when some core file does not build with clang, fuzz the loader
  # alone (it needs only gguf.cpp and error.cpp) rather than not at all, and say so loudly.
  grep -E "error" "$build/build.log" | head -n 5 || true
  echo "fuzz: WARNING: the CMake fuzz build failed (see $build/build.log); building the loader alone" >&2
  clang++ -std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Isrc \
    tests/fuzz/fuzz_gguf.cpp src/gguf.cpp src/error.cpp -o "$build/fuzz_gguf"
fi

seeds="$build/seeds"
corpus="$build/corpus"
artifacts="$build/artifacts"
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus" "$artifacts"
python3 tests/fuzz/make_seeds.py "$seeds" "$model"

# Every seed must load or fail cleanly before fuzzing starts.
"$build/fuzz_gguf" -runs=0 "$seeds" >"$build/seeds.log" 2>&1 || { cat "$build/seeds.log"; exit 1; }

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
echo "fuzz: running fuzz_gguf for ${seconds}s"
set +e
"$build/fuzz_gguf" "$corpus" "$seeds" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 >"$build/fuzz.log" 2>&1
rc=$?
set -e
grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" \
  "$build/fuzz.log" || true
if [ $rc -ne 0 ]; then
  tail -n 60 "$build/fuzz.log"
  echo "fuzz: fuzz_gguf failed (exit $rc); reproducer(s): $(ls "$artifacts" | tr '\n' ' ')"
  exit 1
fi
echo "fuzz: no crash found"
