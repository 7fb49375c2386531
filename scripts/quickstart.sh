#!/usr/bin/env bash
# The first README command: install what is missing, build, fetch the default model, and run Troupe's main job on
# it: `troupe serve`, the OpenAI-compatible HTTP server (extra arguments go to it, e.g. --port 9000 --api-key KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
model=$(scripts/fetch-model.sh)
port=${TROUPE_PORT:-8080}
cat <<MSG

Serving $(basename "$model" .gguf) on http://127.0.0.1:$port (Ctrl-C stops it). From another terminal:

  curl -s http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], "max_tokens": 64}'

MSG
exec build/troupe serve --model "$model" "$@"
