#!/usr/bin/env bash
# troupe serve under 64 concurrent streaming clients.
# The checks are in tests/http/test_concurrency.py (see its docstring); this registers it with ctest.
# Usage: http_concurrency.sh TROUPE_BINARY SOURCE_DIR
exec python3 "$2/tests/http/test_concurrency.py" "$1" "$2"
