#!/usr/bin/env bash
# troupe serve on a bad model file (issue 8's GGUF row): it listens at once and /health answers 503 "loading" (never
# 200), then the load fails and it exits 1 with one error line saying what is wrong: no crash, no sanitizer report,
# no "ready". The files: empty, not GGUF, a future version, the real model cut short, and tiny llama files (written
# with tests/fuzz/make_seeds.py's writer) whose vocabulary does not match the embedding, whose metadata has the wrong
# type, and whose BOS id is outside the vocabulary.
# Usage: serve_bad_model.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$1
src=$2
model=${TROUPE_MODEL:-$src/models/SmolLM2-135M-Instruct.Q4_1.gguf}
passed=0
failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT

: >"$tmp/empty.gguf"
printf 'hello, I am not a model\n' >"$tmp/text.gguf"
printf 'GGUF\004\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' >"$tmp/v4.gguf"
head -c 3000000 "$model" >"$tmp/cut.gguf"
python3 - "$src" "$tmp" <<'EOF' || fail "the tiny llama files could not be written"
import sys
sys.path.insert(0, sys.argv[1] + "/tests/fuzz")
from make_seeds import GGUF_ARR, GGUF_F32, GGUF_I32, GGUF_STR, GGUF_U32, gguf

def tiny(n_tokens=40, n_rows=40, **override):
    tokens = ["<s>", "</s>"] + [f"t{i}" for i in range(2, n_tokens)]
    kvs = {"general.architecture": (GGUF_STR, "llama"), "llama.block_count": (GGUF_U32, 1),
           "llama.context_length": (GGUF_U32, 64), "llama.embedding_length": (GGUF_U32, 32),
           "llama.feed_forward_length": (GGUF_U32, 64), "llama.attention.head_count": (GGUF_U32, 2),
           "llama.attention.head_count_kv": (GGUF_U32, 1), "tokenizer.ggml.model": (GGUF_STR, "gpt2"),
           "tokenizer.ggml.pre": (GGUF_STR, "gpt2"), "tokenizer.ggml.tokens": (GGUF_ARR, (GGUF_STR, tokens)),
           "tokenizer.ggml.token_type": (GGUF_ARR, (GGUF_I32, [3, 3] + [1] * (n_tokens - 2))),
           "tokenizer.ggml.merges": (GGUF_ARR, (GGUF_STR, [])), "tokenizer.ggml.bos_token_id": (GGUF_U32, 0),
           "tokenizer.ggml.eos_token_id": (GGUF_U32, 1)}
    kvs.update(override)
    b = "blk.0."
    tensors = [("token_embd.weight", [32, n_rows], 0), ("output_norm.weight", [32], 0),
               (b + "attn_norm.weight", [32], 0), (b + "ffn_norm.weight", [32], 0),
               (b + "attn_q.weight", [32, 32], 0), (b + "attn_k.weight", [32, 16], 0),
               (b + "attn_v.weight", [32, 16], 0), (b + "attn_output.weight", [32, 32], 0),
               (b + "ffn_gate.weight", [32, 64], 0), (b + "ffn_up.weight", [32, 64], 0),
               (b + "ffn_down.weight", [64, 32], 0)]
    return gguf([(k, t, v) for k, (t, v) in kvs.items()], tensors)

files = {"vocab.gguf": tiny(41, 40), "type.gguf": tiny(**{"llama.block_count": (GGUF_STR, "1")}),
         "bos.gguf": tiny(**{"tokenizer.ggml.bos_token_id": (GGUF_U32, 40)}),
         "rope.gguf": tiny(**{"llama.rope.freq_base": (GGUF_F32, -1.0)})}
for name, data in files.items():
    with open(f"{sys.argv[2]}/{name}", "wb") as f:
        f.write(data)
EOF

# expect_refused NAME FRAGMENT: serve exits 1 within 60 s with one error line holding FRAGMENT; /health never 200
expect_refused() {
  local name=$1 fragment=$2 rc port code errors
  local file=$tmp/$name err=$tmp/$name.err
  timeout 60 "$troupe" serve --model "$file" --port 0 --host 127.0.0.1 2>"$err" >/dev/null &
  local pid=$!
  pids+=("$pid")
  # While it lives, /health may answer: only 503 (loading) is right.
  for _ in $(seq 1 100); do
    port=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$err" 2>/dev/null | grep -oE '[0-9]+$')
    if [ -n "$port" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.05
  done
  if [ -n "${port:-}" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/health")
    if [ "$code" = 503 ] || [ "$code" = 000 ]; then ok; else fail "$name: /health answered $code while loading a bad model"; fi
  fi
  wait "$pid"
  rc=$?
  if [ $rc -eq 1 ]; then ok; else fail "$name: exit $rc, expected 1 (124: it did not exit): $(tail -n 3 "$err")"; fi
  errors=$(grep -c '\[error\]' "$err")
  if [ "$errors" -eq 1 ]; then ok; else fail "$name: $errors error lines: $(cat "$err")"; fi
  if grep '\[error\]' "$err" | grep -qF -- "$fragment"; then ok; else fail "$name: no '$fragment' in: $(grep '\[error\]' "$err")"; fi
  if grep -qE '\] ready$|terminate called|Segmentation|AddressSanitizer|runtime error|LeakSanitizer' "$err"; then
    fail "$name: $(grep -E '\] ready$|terminate called|Segmentation|AddressSanitizer|runtime error|LeakSanitizer' "$err" | head -n 3)"
  else
    ok
  fi
}

expect_refused empty.gguf "truncated"
expect_refused text.gguf "bad magic"
expect_refused v4.gguf "unsupported GGUF version 4"
expect_refused cut.gguf "past the end of the file"
expect_refused vocab.gguf "the vocabulary has 41 tokens but the embedding has 40 rows"
expect_refused type.gguf "metadata 'llama.block_count' has type string, expected an integer"
expect_refused bos.gguf "tokenizer.ggml.bos_token_id = 40 is out of range (vocabulary of 40)"
expect_refused rope.gguf "rope.freq_base is out of range"
# a path that is no file, and a directory
expect_missing() {
  local what=$1 path=$2 fragment=$3 rc
  timeout 60 "$troupe" serve --model "$path" --port 0 --host 127.0.0.1 2>"$tmp/missing.err" >/dev/null
  rc=$?
  if [ $rc -eq 1 ] && grep '\[error\]' "$tmp/missing.err" | grep -qF -- "$fragment"; then ok; else
    fail "$what: exit $rc: $(tail -n 2 "$tmp/missing.err")"
  fi
}
expect_missing "a missing file" "$tmp/nothing.gguf" "cannot open"
expect_missing "a directory" "$tmp" "not a regular file"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
