#!/usr/bin/env bash
# troupe inspect on the real default model, and clear one-line errors for files that are not models.
# Usage: inspect.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$1
model=$2/models/SmolLM2-135M-Instruct.Q4_1.gguf
passed=0
failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { if eval "$1"; then ok; else fail "$2"; fi; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# the real model: exit 0, the metadata and the tensors listed
out=$("$troupe" inspect "$model" 2>"$tmp/stderr")
rc=$?
check '[ $rc -eq 0 ]' "inspect of the real model exited $rc: $(head -c 300 "$tmp/stderr")"
check 'grep -q "llama.block_count" <<<"$out"' "llama.block_count not printed"
check 'grep -q "token_embd.weight" <<<"$out"' "token_embd.weight not printed"
check 'grep -Eq "^GGUF v[23]," <<<"$out"' "no GGUF version line: $(head -n 1 <<<"$out")"

# expect_error NAME FILE FRAGMENT: non-zero exit, exactly one stderr line starting "error:", containing FRAGMENT
expect_error() {
  local name=$1 file=$2 fragment=$3 err rc
  # timeout: a file that makes the loader wait (a FIFO with no writer) must fail, not hang the test
  err=$(timeout 60 "$troupe" inspect "$file" 2>&1 >/dev/null)
  rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exited 0"; return; fi
  if [ $rc -eq 124 ]; then fail "$name: still running after 60 s"; return; fi
  if [ $rc -ge 128 ]; then fail "$name: killed by signal $((rc - 128)): $err"; return; fi
  if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then fail "$name: not one line: $err"; return; fi
  if ! grep -q "^error: " <<<"$err"; then fail "$name: no 'error:' prefix: $err"; return; fi
  if ! grep -qi -- "$fragment" <<<"$err"; then fail "$name: '$fragment' not in: $err"; return; fi
  ok
}

head -c 100000 "$model" >"$tmp/truncated.gguf"
expect_error "truncated model" "$tmp/truncated.gguf" "truncated"
head -c 1000 "$model" >"$tmp/short.gguf"
expect_error "model cut in its metadata" "$tmp/short.gguf" "truncated"
printf 'this is not a model at all, just some text\n' >"$tmp/bad_magic.gguf"
expect_error "bad magic" "$tmp/bad_magic.gguf" "magic"
: >"$tmp/empty.gguf"
expect_error "empty file" "$tmp/empty.gguf" "truncated"
expect_error "missing path" "$tmp/does-not-exist.gguf" "does-not-exist.gguf"
expect_error "a directory" "$tmp" "regular file"
mkfifo "$tmp/fifo.gguf"
expect_error "a FIFO" "$tmp/fifo.gguf" "regular file"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
