#!/usr/bin/env bash
# bench/serve_bench.py against troupe serve: exact token counts, ordered latencies, goodput, JSON and markdown.
# The checks are in tests/http/test_bench.py (see its docstring); this registers it with ctest.
# Usage: http_bench.sh TROUPE_BINARY SOURCE_DIR
exec python3 "$2/tests/http/test_bench.py" "$1" "$2"
