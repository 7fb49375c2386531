#!/usr/bin/env bash
# The second README command: install what is missing, build, fetch the default model, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
scripts/fetch-model.sh >/dev/null
ctest --test-dir build --output-on-failure -j "$(nproc)"
# The fuzzers (GGUF loader, tokenizer, request parser, HTTP layer, worker wire decoder), 45 s each unless
# TROUPE_FUZZ_SECONDS says; scripts/fuzz.sh SECONDS runs them longer (docs/hardening.md).
scripts/fuzz.sh "${TROUPE_FUZZ_SECONDS:-45}"
# The tests again, built with ASan and UBSan (scripts/sanitize.sh); TROUPE_SANITIZE=0 skips it.
if [ "${TROUPE_SANITIZE:-1}" != 0 ]; then scripts/sanitize.sh; fi
