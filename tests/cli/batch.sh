#!/usr/bin/env bash
# troupe batch end to end on the real default model: every good line answered once, bad lines reported while the
# rest completes, greedy text equal to `troupe generate` (the single-sequence reference), a cut model (tp 2, pp 2)
# equal to the uncut one, seeded sampling that repeats, resume that runs only what is missing, clear plan errors.
# Usage: batch.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
model=$(realpath "$2")/models/SmolLM2-135M-Instruct.Q4_1.gguf
source "$(dirname "${BASH_SOURCE[0]}")/lib/check.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
n=12  # tokens per line: short, so the test stays fast
batch() { "$troupe" batch --model "$model" -n $n "$@"; }

# 12 good lines (raw prompts and chats, string and number ids, one without an id: its line number), a malformed
# line (line 7) and a line with no prompt (id "noprompt").
cat >in.jsonl <<'EOF'
{"id": "p1", "prompt": "Once upon a time"}
{"id": "c1", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
{"id": 3, "prompt": "1, 2, 3, 4,"}
{"id": "c2", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]}
{"id": "p2", "prompt": "The quick brown fox", "max_tokens": 6}
{"id": "p3", "prompt": "def fibonacci(n):", "stop": ["\n\n"]}
{"id": "broken", "prompt": "no closing brace"
{"id": "c3", "messages": [{"role": "user", "content": "Write a haiku about the sea."}], "temperature": 0}
{"prompt": "In the beginning"}
{"id": "noprompt", "max_tokens": 4}
{"id": "p4", "prompt": "Water boils at"}
{"id": "c4", "messages": [{"role": "user", "content": "What is 2+2?"}]}
{"id": "p5", "prompt": "The three primary colours are"}
{"id": "p6", "prompt": "My favourite food is", "seed": 42}
EOF
good_ids='"p1" "c1" 3 "c2" "p2" "p3" "c3" 9 "p4" "c4" "p5" "p6"'

# results FILE: "ID => text-or-ERROR:type" per line, ids as JSON, sorted; texts escaped as JSON strings
results() {
  python3 - "$1" <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1], encoding="utf-8"):
    j = json.loads(line)
    value = "ERROR:" + j["error"]["type"] if "error" in j else json.dumps(j["text"])
    rows.append(json.dumps(j["id"]) + " => " + value)
print("\n".join(sorted(rows)))
PY
}
text_of() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    if json.dumps(j["id"]) == sys.argv[2] and "text" in j: sys.stdout.write(j["text"])' "$1" "$2"; }
ids() { results "$1" | sed 's/ => .*//'; }
count_id() { ids "$1" | grep -cxF -- "$2"; }

# ---- a greedy run: every good id once with text, the bad lines as errors ----
batch --in in.jsonl --out out1.jsonl --temp 0 2>err1.txt
rc=$?
check "the batch exited $rc: $(tail -3 err1.txt)" test $rc -eq 0
check "the summary is missing or wrong: $(tail -1 err1.txt)" grep -q "14 lines: 12 done, 0 skipped, 2 failed" err1.txt
ok=1
for id in $good_ids; do
  [ "$(count_id out1.jsonl "$id")" = 1 ] && grep -qF -- "$id => \"" <<<"$(results out1.jsonl)" ||
    { ok=0; echo "id $id: $(grep -F -- "$id => " <<<"$(results out1.jsonl)")"; }
done
check "some good id was not answered exactly once with text" test $ok = 1
check "the malformed line 7 was not reported as invalid_argument" grep -qx '7 => ERROR:invalid_argument' <<<"$(results out1.jsonl)"
check "the line without a prompt was not reported" grep -qx '"noprompt" => ERROR:invalid_argument' <<<"$(results out1.jsonl)"
check "the output has other than 14 lines" test "$(wc -l <out1.jsonl)" = 14
check "p2's max_tokens 6 was not honoured" grep -q '"id":"p2".*"completion_tokens":6' out1.jsonl

# ---- the reference path: greedy text equals troupe generate's for the same prompt ----
same_as_generate() {  # ID GENERATE-ARGS...
  local id=$1
  shift
  "$troupe" generate --model "$model" --temp 0 -n $n "$@" >gen.txt 2>/dev/null || return 1
  python3 -c 'import sys; t = open(sys.argv[1], encoding="utf-8").read(); sys.stdout.write(t[:-1] if t.endswith("\n") else t)' gen.txt >gen_text.txt
  text_of out1.jsonl "$id" >batch_text.txt
  cmp -s gen_text.txt batch_text.txt || { echo "generate: '$(cat gen_text.txt)' batch: '$(cat batch_text.txt)'"; return 1; }
}
check "raw prompt p1 differs from troupe generate" same_as_generate '"p1"' --prompt "Once upon a time"
check "raw prompt 3 differs from troupe generate" same_as_generate 3 --prompt "1, 2, 3, 4,"
check "chat c1 differs from troupe generate --chat" same_as_generate '"c1"' --chat "What is the capital of France?"
check "chat c2 differs from troupe generate --chat --system" \
  same_as_generate '"c2"' --chat "Name a colour." --system "You are terse."

# ---- a cut model gives the same greedy text as the uncut one ----
# src/shard.hpp: partials are summed in double and rounded once, so any split gives Forward's floats in either
# precision: the tokens do not depend on the plan. The first run above was tp 1, pp 1, fast.
batch --in in.jsonl --out tp2.jsonl --temp 0 --tp 2 --pp 2 2>err_tp2.txt
check "tp 2 pp 2 did not run: $(tail -2 err_tp2.txt)" grep -q "12 done" err_tp2.txt
check "tp 2 pp 2 gave other greedy text than tp 1" cmp -s <(results out1.jsonl) <(results tp2.jsonl)

# ---- seeds: a sampled run repeats exactly, whatever order lines finish in ----
batch --in in.jsonl --out s1.jsonl --temp 1.0 --seed 5 --parallel 4 2>/dev/null
batch --in in.jsonl --out s2.jsonl --temp 1.0 --seed 5 --parallel 1 2>/dev/null
batch --in in.jsonl --out s3.jsonl --temp 1.0 --seed 6 --parallel 4 2>/dev/null
check "the same --seed sampled different text" cmp -s <(results s1.jsonl) <(results s2.jsonl)
differ() { ! cmp -s "$1" "$2"; }
check "another --seed sampled the same text everywhere" differ <(results s1.jsonl) <(results s3.jsonl)
check "a line's own seed did not win over --seed" test "$(text_of s1.jsonl '"p6"')" = "$(text_of s3.jsonl '"p6"')"

# ---- resume: drop three answers, rerun: only those three run, every id once ----
cp out1.jsonl resume.jsonl
grep -v -e '"id":"p1"' -e '"id":"c2"' -e '"id":9,' resume.jsonl >resume.tmp && mv resume.tmp resume.jsonl
batch --in in.jsonl --out resume.jsonl --temp 0 2>err_resume.txt
rc=$?
check "resume exited $rc" test $rc -eq 0
check "resume did not skip the 9 answered lines: $(tail -1 err_resume.txt)" \
  grep -q "14 lines: 3 done, 9 skipped, 2 failed" err_resume.txt
check "after resume the file does not hold each id once" test "$(ids resume.jsonl | sort | uniq -d)" = ""
check "after resume the answers differ from the first run" cmp -s <(results out1.jsonl) <(results resume.jsonl)
# a torn last line (a crash mid-write) is dropped and its line run again
head -c -20 out1.jsonl >torn.jsonl
batch --in in.jsonl --out torn.jsonl --temp 0 2>err_torn.txt
check "a torn last line was not run again: $(tail -1 err_torn.txt)" grep -q "1 done, 11 skipped, 2 failed" err_torn.txt
check "after a torn line the answers differ" cmp -s <(results out1.jsonl) <(results torn.jsonl)
# everything answered: nothing runs
batch --in in.jsonl --out resume.jsonl --temp 0 2>err_again.txt
check "a finished file ran again: $(tail -1 err_again.txt)" grep -q "0 done, 12 skipped, 2 failed" err_again.txt

# ---- plan settings: precedence and clear errors ----
echo '{"id": 1, "prompt": "Hi"}' >one.jsonl
err=$(batch --in one.jsonl --out e.jsonl --tp 0 2>&1)
check "--tp 0 was not refused clearly: $err" grep -q "error: --tp '0': expected a whole number from 1" <<<"$err"
err=$(TROUPE_PP=two batch --in one.jsonl --out e.jsonl 2>&1)
check "TROUPE_PP=two was not refused clearly: $err" grep -q "error: TROUPE_PP 'two'" <<<"$err"
err=$(TROUPE_PP=two batch --in one.jsonl --out e.jsonl --pp 1 2>&1)
check "an invalid environment value is still reported under a flag: $err" grep -q "error: TROUPE_PP" <<<"$err"
echo '{"engine": {"tp": 1, "max_runing": 4}}' >bad.json
err=$(batch --in one.jsonl --out e.jsonl --config bad.json 2>&1)
check "an unknown config key was not refused: $err" grep -q "engine.max_runing: unknown key" <<<"$err"
echo '{"engine": {"max_running": 3, "max_waiting": 7}}' >good.json
log=$(TROUPE_MAX_RUNNING=5 batch --in one.jsonl --out e.jsonl --config good.json --max-waiting 9 2>&1)
check "precedence config < env < flags not applied: $log" \
  grep -q "max_running=5.*max_waiting=9" <<<"$(grep "plan:" <<<"$log")"
log=$(batch --in one.jsonl --out e2.jsonl --config good.json 2>&1)
check "the config file was not applied: $log" grep -q "max_running=3" <<<"$(grep "plan:" <<<"$log")"
err=$(batch --in missing.jsonl --out e.jsonl 2>&1)
check "a missing input file was not refused: $err" grep -q "^error: cannot open missing.jsonl" <<<"$err"

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
