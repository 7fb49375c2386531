#!/usr/bin/env bash
# The first README command: install what is missing, build, fetch the default model, and run Troupe's main job on it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
model=$(scripts/fetch-model.sh)
exec build/troupe generate --model "$model" --chat "${1:-What is the capital of France? Answer in one sentence.}" --temp 0 -n 128 --verbose
