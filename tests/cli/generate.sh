#!/usr/bin/env bash
# troupe generate end to end on the real default model: a sensible chat answer, seeded sampling that repeats,
# stop strings and max tokens honoured, clear errors for bad input.
# Usage: generate.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$1
model=$2/models/SmolLM2-135M-Instruct.Q4_1.gguf
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

answer=$("$troupe" generate --model "$model" --chat "What is the capital of France? Answer in one sentence." --temp 0 -n 32 2>&1)
[ $? -eq 0 ] || fail "chat generation exited non-zero: $answer"
grep -q "Paris" <<<"$answer" || fail "the answer does not name Paris: $answer"

a=$("$troupe" generate --model "$model" --prompt "Once upon a time" --seed 7 -n 24 2>/dev/null)
b=$("$troupe" generate --model "$model" --prompt "Once upon a time" --seed 7 -n 24 2>/dev/null)
c=$("$troupe" generate --model "$model" --prompt "Once upon a time" --seed 8 --temp 1.5 -n 24 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] || fail "the same seed gave different text: '$a' vs '$b'"
[ "$a" != "$c" ] || fail "another seed and temperature gave the same text: '$a'"

# --verbose reports the counts: -n caps the generated tokens
stats=$("$troupe" generate --model "$model" --prompt "1, 2, 3, 4," --temp 0 -n 5 --ignore-eos --verbose 2>&1 >/dev/null)
grep -q "generated: 5 tokens" <<<"$stats" || fail "-n 5 did not generate exactly 5 tokens: $stats"

# a stop string ends the text before it
out=$("$troupe" generate --model "$model" --prompt "1, 2, 3, 4," --temp 0 -n 40 --stop " 8" 2>/dev/null)
grep -q " 7" <<<"$out" || fail "expected the count to reach 7 before the stop string: '$out'"
grep -q " 8" <<<"$out" && fail "the stop string ' 8' was printed: '$out'"

# errors are one clear line and a non-zero exit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c 100000 "$model" >"$tmp/truncated.gguf"
err=$("$troupe" generate --model "$tmp/truncated.gguf" --prompt hi 2>&1)
[ $? -ne 0 ] && grep -q "^error: .*truncated" <<<"$err" || fail "a truncated model was not refused clearly: $err"
err=$("$troupe" generate --model "$model" 2>&1)
[ $? -ne 0 ] && grep -q "^error:" <<<"$err" || fail "a missing prompt was not refused: $err"
err=$("$troupe" generate --model "$model" --prompt hi --logit-bias 999999=1 2>&1)
[ $? -ne 0 ] && grep -q "logit-bias" <<<"$err" || fail "an out-of-vocabulary logit bias was not refused: $err"

echo "$((10 - failures)) passed, $failures failed"
[ $failures -eq 0 ]
