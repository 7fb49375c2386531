#!/usr/bin/env bash
# troupe bench on the real default model at small sizes (seconds, not minutes): the JSON report has every field, one
# test per -p/-n value and thread count, -r samples each, positive and finite figures; the markdown table has a row
# per test; --direct runs Forward alone; bad flags are refused with one clear line. A benchmark's figures are never
# compared against a threshold here: only their shape.
# Usage: bench.sh TROUPE_BINARY SOURCE_DIR
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

# check_json FILE MODE TESTS THREADS REPS: the report's shape (python3: the checks name what is wrong)
check_json() {
  python3 - "$@" <<'EOF'
import json, math, sys
path, mode, tests, threads, reps = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(","), int(sys.argv[5])
problems = []
try:
    doc = json.load(open(path))
except ValueError as e:
    print(f"not JSON: {e}: {open(path).read()[:300]}")
    sys.exit(1)
for key in ("build_commit", "build_type", "compiler", "cpu_info", "kernels", "mode", "precision", "model_file",
            "model_size", "model_n_params", "repetitions", "tests"):
    if key not in doc:
        problems.append(f"no {key!r}")
if doc.get("mode") != mode:
    problems.append(f"mode {doc.get('mode')!r}, not {mode!r}")
if not doc.get("model_file", "").endswith("SmolLM2-135M-Instruct.Q4_1.gguf"):
    problems.append(f"model_file {doc.get('model_file')!r}")
if not (isinstance(doc.get("model_size"), int) and doc["model_size"] > 0 and doc.get("model_n_params", 0) > 0):
    problems.append(f"model size/params {doc.get('model_size')!r} {doc.get('model_n_params')!r}")
if not doc.get("kernels"):
    problems.append("empty kernel name")
want = [(t, int(n)) for n in threads for t in tests]
got = [(t.get("test"), t.get("threads")) for t in doc.get("tests", [])]
if got != want:
    problems.append(f"tests {got}, not {want}")
def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
for t in doc.get("tests", []):
    name = t.get("test", "?")
    for key in ("n_prompt", "n_gen", "threads", "plan", "samples_ns", "samples_ts", "avg_ts", "stddev_ts"):
        if key not in t:
            problems.append(f"{name}: no {key!r}")
    n = int(name[2:]) if name[2:].isdigit() else -1
    if name.startswith("pp") and (t.get("n_prompt"), t.get("n_gen")) != (n, 0):
        problems.append(f"{name}: n_prompt/n_gen {t.get('n_prompt')}/{t.get('n_gen')}")
    if name.startswith("tg") and (t.get("n_prompt"), t.get("n_gen")) != (0, n):
        problems.append(f"{name}: n_prompt/n_gen {t.get('n_prompt')}/{t.get('n_gen')}")
    ts = t.get("samples_ts", [])
    if len(ts) != reps or not all(positive(x) for x in ts):
        problems.append(f"{name}: samples_ts {ts} (want {reps} positive numbers)")
    if not positive(t.get("avg_ts")):
        problems.append(f"{name}: avg_ts {t.get('avg_ts')!r}")
    elif ts and not min(ts) - 1e-6 <= t["avg_ts"] <= max(ts) + 1e-6:
        problems.append(f"{name}: avg_ts {t['avg_ts']} outside its samples {ts}")
    sd = t.get("stddev_ts")
    if not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd >= 0):
        problems.append(f"{name}: stddev_ts {sd!r}")
    if mode == "direct" and t.get("plan") != "direct":
        problems.append(f"{name}: plan {t.get('plan')!r} in direct mode")
    if mode == "engine" and not str(t.get("plan", "")).startswith("tp="):
        problems.append(f"{name}: plan {t.get('plan')!r}")
print("; ".join(problems))
sys.exit(1 if problems else 0)
EOF
}

# the actor troupe, two prompt lengths and one generation, one thread, JSON
"$troupe" bench --model "$model" -p 16,32 -n 8 -r 2 -t 1 -o json >"$tmp/engine.json" 2>"$tmp/stderr"
rc=$?
check '[ $rc -eq 0 ]' "bench (engine) exited $rc: $(tail -c 400 "$tmp/stderr")"
problems=$(check_json "$tmp/engine.json" engine pp16,pp32,tg8 1 2)
check '[ $? -eq 0 ]' "engine JSON: $problems"

# two thread counts: one engine each, the tests repeated per count; plan flags pass through (--tp 1)
"$troupe" bench --model "$model" -p 16 -n 4 -r 1 -t 1,2 --tp 1 -o json >"$tmp/threads.json" 2>"$tmp/stderr"
rc=$?
check '[ $rc -eq 0 ]' "bench -t 1,2 exited $rc: $(tail -c 400 "$tmp/stderr")"
problems=$(check_json "$tmp/threads.json" engine pp16,tg4 1,2 1)
check '[ $? -eq 0 ]' "-t 1,2 JSON: $problems"
check 'grep -q "\"plan\": \"tp=1 pp=1" "$tmp/threads.json"' "--tp 1 not in the reported plan"

# the single-process Forward path
"$troupe" bench --model "$model" -p 16 -n 8 -r 2 --direct -o json >"$tmp/direct.json" 2>"$tmp/stderr"
rc=$?
check '[ $rc -eq 0 ]' "bench --direct exited $rc: $(tail -c 400 "$tmp/stderr")"
problems=$(check_json "$tmp/direct.json" direct pp16,tg8 1 2)
check '[ $? -eq 0 ]' "direct JSON: $problems"

# the markdown table: a header and one row per test, mean ± stddev
out=$("$troupe" bench --model "$model" -p 16 -n 4 -r 1 -t 1 2>"$tmp/stderr")
rc=$?
check '[ $rc -eq 0 ]' "bench (markdown) exited $rc: $(tail -c 400 "$tmp/stderr")"
check 'grep -q "^| model .* test | t/s |$" <<<"$out"' "no table header: $out"
check '[ "$(grep -cE "\| (pp16|tg4) \| [0-9.]+ ± [0-9.]+ \|$" <<<"$out")" = 2 ]' "not two test rows: $out"

# errors: one line, non-zero exit
err=$("$troupe" bench --model "$model" --direct -t 2 2>&1)
check '[ $? -ne 0 ] && grep -q "^error: .*-t must be 1" <<<"$err"' "--direct -t 2 was not refused: $err"
err=$("$troupe" bench --model "$model" -p 0 -n 0 2>&1)
check '[ $? -ne 0 ] && grep -q "^error: no tests" <<<"$err"' "-p 0 -n 0 was not refused: $err"
err=$("$troupe" bench --model "$model" -o xml 2>&1)
check '[ $? -ne 0 ] && grep -q "^error: --output" <<<"$err"' "-o xml was not refused: $err"
err=$("$troupe" bench --model "$model" -t 1 --threads 2 2>&1)
check '[ $? -ne 0 ] && grep -q "^error: .*not both" <<<"$err"' "-t with --threads was not refused: $err"
err=$("$troupe" bench --model "$model" -p 16 -n 4 -r 1 --tp 0 2>&1)
check '[ $? -ne 0 ] && grep -q "error.*--tp" <<<"$err"' "a bad plan flag was not refused: $err"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
