#!/usr/bin/env bash
# troupe serve through the official `openai` package.
# The checks are in tests/http/test_openai_client.py (see its docstring); this registers it with ctest.
# Usage: http_openai.sh TROUPE_BINARY SOURCE_DIR
exec python3 "$2/tests/http/test_openai_client.py" "$1" "$2"
