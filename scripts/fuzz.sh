#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp) with clang, ASan and UBSan into build-fuzz and runs each for
# a bounded time from its committed seed corpus (tests/fuzz/corpus/NAME/):
#   fuzz_gguf       the GGUF loader                    fuzz_tokenizer  encode, and incremental decode of any ids
#   fuzz_openai     request parser and validator       fuzz_http       raw bytes into the server (parser, routes,
#   fuzz_wire       a worker's decoder of buffers and                  sessions over loopback)
#                   its check of steps from another process
#   scripts/fuzz.sh [SECONDS] [NAME...]   run each fuzzer (or those named) for SECONDS (default $TROUPE_FUZZ_SECONDS,
#                                         else 60); exits non-zero when a crash, abort, leak, timeout or
#                                         out-of-memory input is found (saved under build-fuzz/artifacts/NAME/)
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (build parallelism, default nproc), TROUPE_MODEL.
# The tokenizer and HTTP fuzzers read the default model's vocabulary and chat template (fetched if missing). Each
# fuzzer's corpus grows in build-fuzz/corpus/NAME between runs; docs/hardening.md says how to run longer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${TROUPE_FUZZ_SECONDS:-60}}
shift $(( $# > 0 ? 1 : 0 ))
build=${FUZZ_BUILD_DIR:-build-fuzz}
model=${TROUPE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

mkdir -p "$build"
cmake -S . -B "$build" -DTROUPE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DTROUPE_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if [ ! -f "$model" ]; then scripts/fetch-model.sh >/dev/null; fi

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
if [ $# -gt 0 ]; then names=("$@"); else names=(); for src in tests/fuzz/fuzz_*.cpp; do names+=("$(basename "$src" .cpp)"); done; fi
failed=0
for name in "${names[@]}"; do
  src=tests/fuzz/$name.cpp
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

  seeds=tests/fuzz/corpus/$name
  extra="$build/seeds/$name"  # seeds made here: the model's first 64 KiB for the loader
  corpus="$build/corpus/$name"
  artifacts="$build/artifacts/$name"
  rm -rf "$extra"
  mkdir -p "$extra" "$corpus" "$artifacts"
  if [ "$name" = fuzz_gguf ] && [ -f "$model" ]; then head -c 65536 "$model" >"$extra/model_head.gguf"; fi

  # Every seed must pass before fuzzing starts.
  "$bin" -runs=0 "$seeds" "$extra" >"$build/$name.seeds.log" 2>&1 || { tail -n 40 "$build/$name.seeds.log"; failed=1; continue; }

  # -malloc_limit_mb: no input of at most 64 KiB may ask for 64 MiB in one allocation (allocations are proportionate
  # to the input; anything else is an amplification bug). fuzz_http: the server's threads outlive each input, so
  # libFuzzer's per-input leak check (slow, and racy with threads) is off; LeakSanitizer still checks at exit.
  flags=(-max_len=65536)
  case $name in
    fuzz_tokenizer) flags=(-max_len=16384) ;;
    fuzz_http) flags=(-max_len=65536 -detect_leaks=0) ;;
  esac
  echo "fuzz: running $name for ${seconds}s"
  set +e
  "$bin" "$corpus" "$seeds" "$extra" "${flags[@]}" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$build/$name.log" 2>&1
  rc=$?
  set -e
  grep -E "^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" \
    "$build/$name.log" || true
  if [ $rc -ne 0 ]; then
    grep -v "^    #" "$build/$name.log" | tail -n 30
    echo "fuzz: $name failed (exit $rc); reproducer(s) in $artifacts: $(ls "$artifacts" | tr '\n' ' ')"
    failed=1
  fi
done

if [ $failed -ne 0 ]; then
  echo "fuzz: FAILED"
  exit 1
fi
echo "fuzz: no crash found"
