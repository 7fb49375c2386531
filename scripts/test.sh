#!/usr/bin/env bash
# The second README command: install what is missing, build, fetch the default model, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
ctest --test-dir build --output-on-failure -j "$(nproc)"
# The GGUF loader's fuzzer, briefly (scripts/fuzz.sh SECONDS runs it longer).
if [ -x scripts/fuzz.sh ]; then scripts/fuzz.sh "${TROUPE_FUZZ_SECONDS:-30}"; fi
