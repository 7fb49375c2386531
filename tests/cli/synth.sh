#!/usr/bin/env bash
# troupe synth: a synthetic model of the default model's shape that inspect shows and generate runs on, the same
# bytes and the same text twice, overrides honoured, impossible shapes refused with one clear line and no file.
# Usage: synth.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$1
passed=0
failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { if eval "$1"; then ok; else fail "$2"; fi; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=$tmp/smol.gguf

# the default model's shape, Q4_1
out=$("$troupe" synth --shape smollm2-135m --out "$model" 2>&1)
rc=$?
check '[ $rc -eq 0 ]' "synth exited $rc: $out"
check '[ -f "$model" ] && [ ! -e "$model.tmp" ]' "no file written, or its temporary left behind"
size=$(stat -c %s "$model" 2>/dev/null || echo 0)
check 'grep -q "wrote $model: $size bytes" <<<"$out"' "the report does not give the file and its size ($size): $out"
check 'grep -q "30 layers, embedding 576, 9 heads (3 KV)" <<<"$out"' "the report does not give the shape: $out"
check '[ "$size" -gt 90000000 ] && [ "$size" -lt 110000000 ]' "a SmolLM2-shape Q4_1 file of $size bytes"

# the same seed gives the same bytes, another seed other bytes
"$troupe" synth --out "$tmp/again.gguf" >/dev/null 2>&1
check 'cmp -s "$model" "$tmp/again.gguf"' "two writes with seed 0 differ"
"$troupe" synth --out "$tmp/seed1.gguf" --seed 1 >/dev/null 2>&1
check '! cmp -s "$model" "$tmp/seed1.gguf"' "seeds 0 and 1 gave the same file"
rm -f "$tmp/again.gguf" "$tmp/seed1.gguf"

# inspect shows the shape
info=$("$troupe" inspect "$model" 2>&1)
check '[ $? -eq 0 ]' "inspect failed: $(head -c 300 <<<"$info")"
check 'grep -Eq "llama.block_count +30$" <<<"$info"' "inspect: block_count is not 30"
check 'grep -Eq "llama.embedding_length +576$" <<<"$info"' "inspect: embedding_length is not 576"
check 'grep -Eq "tokenizer.ggml.tokens +\[string x 49152\]" <<<"$info"' "inspect: not 49152 tokens"
check 'grep -Eq "blk.29.ffn_down.weight +q4_1" <<<"$info"' "inspect: no Q4_1 blk.29.ffn_down.weight"

# generate runs, greedy and seeded sampling both repeat
a=$("$troupe" generate --model "$model" --prompt "the quick brown fox" --temp 0 -n 16 --ignore-eos 2>"$tmp/err")
rc=$?
check '[ $rc -eq 0 ] && [ -n "$a" ]' "greedy generation exited $rc or printed nothing: $(head -c 300 "$tmp/err")"
b=$("$troupe" generate --model "$model" --prompt "the quick brown fox" --temp 0 -n 16 --ignore-eos 2>/dev/null)
check '[ "$a" = "$b" ]' "greedy generation differs between runs: '$a' vs '$b'"
a=$("$troupe" generate --model "$model" --chat "hello there" --seed 5 -n 16 --ignore-eos 2>/dev/null)
b=$("$troupe" generate --model "$model" --chat "hello there" --seed 5 -n 16 --ignore-eos 2>/dev/null)
check '[ -n "$a" ] && [ "$a" = "$b" ]' "seeded chat generation differs between runs or is empty: '$a' vs '$b'"
stats=$("$troupe" generate --model "$model" --prompt "abc" --temp 0 -n 8 --ignore-eos --verbose 2>&1 >/dev/null)
check 'grep -q "generated: 8 tokens" <<<"$stats"' "-n 8 did not generate 8 tokens: $stats"

# overrides on top of a named shape
out=$("$troupe" synth --shape llama-1b --layers 2 --embd 256 --heads 8 --kv-heads 2 --ff 512 --vocab 1000 --ctx 512 \
      --type q8_0 --untied --out "$tmp/small.gguf" 2>&1)
check '[ $? -eq 0 ]' "synth with overrides failed: $out"
info=$("$troupe" inspect "$tmp/small.gguf" 2>&1)
check 'grep -Eq "llama.block_count +2$" <<<"$info" && grep -Eq "llama.attention.head_count_kv +2$" <<<"$info"' \
      "overrides not in the file: $(grep llama. <<<"$info")"
check 'grep -Eq "output.weight +q8_0 +256 x 1000" <<<"$info" && grep -Eq "blk.1.attn_k.weight +q8_0 +256 x 64" \
      <<<"$info"' \
      "untied output or KV shape wrong"
out=$("$troupe" generate --model "$tmp/small.gguf" --prompt "hi" --temp 0 -n 4 --ignore-eos 2>&1)
check '[ $? -eq 0 ]' "generate on the overridden shape failed: $out"

# expect_refusal NAME FRAGMENT ARGS...: non-zero exit, one stderr line starting "error:" with FRAGMENT, no file
expect_refusal() {
  local name=$1 fragment=$2 err rc
  shift 2
  err=$("$troupe" synth --out "$tmp/bad.gguf" "$@" 2>&1 >/dev/null)
  rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exited 0"; return; fi
  if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then fail "$name: not one line: $err"; return; fi
  if ! grep -q "^error: " <<<"$err"; then fail "$name: no 'error:' prefix: $err"; return; fi
  if ! grep -qi -- "$fragment" <<<"$err"; then fail "$name: '$fragment' not in: $err"; return; fi
  if [ -e "$tmp/bad.gguf" ] || [ -e "$tmp/bad.gguf.tmp" ]; then fail "$name: a file was left"; return; fi
  ok
}
expect_refusal "heads not dividing the embedding" "not a multiple of n_head" --heads 7
expect_refusal "KV heads not dividing the heads" "not a multiple of n_head_kv" --kv-heads 2
expect_refusal "quantised FFN not a multiple of 32" "n_ff 1000 is not a multiple of 32" --ff 1000
expect_refusal "quantised embedding not a multiple of 32" "multiple of 32" --embd 584 --heads 4 --kv-heads 1
expect_refusal "vocabulary too small" "n_vocab" --vocab 100
expect_refusal "no layers" "n_layer" --layers 0
expect_refusal "unknown shape" "unknown shape 'llama-70b'" --shape llama-70b
err=$("$troupe" synth --out "$tmp/bad.gguf" --type q5_0 2>&1)
check '[ $? -ne 0 ] && [ ! -e "$tmp/bad.gguf" ]' "--type q5_0 was accepted: $err"
err=$("$troupe" synth --out "$tmp/no/such/dir/model.gguf" --layers 1 --vocab 300 2>&1)
check '[ $? -ne 0 ] && grep -q "^error: .*no/such/dir/model.gguf" <<<"$err"' \
      "an unwritable path was not refused clearly: $err"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
