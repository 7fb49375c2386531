#!/usr/bin/env bash
# troupe serve against hostile and broken clients.
# The checks are in tests/http/test_hostile.py (see its docstring); this registers it with ctest.
# Usage: http_hostile.sh TROUPE_BINARY SOURCE_DIR
exec python3 "$2/tests/http/test_hostile.py" "$1" "$2"
