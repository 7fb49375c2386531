#!/usr/bin/env bash
# dist_bench.sh: what a split across two processes costs (docs/distributed.md, "Measured"). `troupe bench`, one
# sequence, alternated round by round: a pipeline (pp 2) with both stages in this process; stage 1 on a worker (the
# logits cross back); stage 0 on a worker (only activations cross); and tensor parallelism (tp 2, pp 1) with both
# head groups in this process; head group 1 on a worker (its partial sums cross, two all-reduces per layer). Prints
# prefill and decode tokens/s (median of the rounds, with their range) and the bytes the worker received and sent
# per decoded token (strace of its socket calls over a decode-only run, when strace is installed).
# DIST_BENCH_KINDS picks some of: local last first heads_local heads (default: all).
# Usage: scripts/dist_bench.sh [TROUPE_BINARY] [ROUNDS] [extra troupe bench flags...]
set -u
troupe=$(realpath "${1:-build/troupe}")
rounds=${2:-3}
shift $(($# > 2 ? 2 : $#))
model=${TROUPE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
wpid=
trap '[ -n "$wpid" ] && kill "$wpid" 2>/dev/null; rm -rf "$tmp"' EXIT

"$troupe" worker --listen 127.0.0.1:0 --model "$model" 2>"$tmp/worker.log" &
wpid=$!
for _ in $(seq 100); do grep -q 'worker listening' "$tmp/worker.log" 2>/dev/null && break; sleep 0.1; done
port=$(grep -o 'worker listening on [^ ]*' "$tmp/worker.log" | sed 's/.*://')
[ -n "$port" ] || { echo "the worker did not start"; exit 1; }
echo '{"engine": {"pp": 2}}' >"$tmp/local.json"
echo "{\"engine\": {\"pp\": 2}, \"placement\": [{\"stage\": 1, \"worker\": \"127.0.0.1:$port\"}]}" >"$tmp/last.json"
echo "{\"engine\": {\"pp\": 2}, \"placement\": [{\"stage\": 0, \"worker\": \"127.0.0.1:$port\"}]}" >"$tmp/first.json"
echo '{"engine": {"tp": 2}}' >"$tmp/heads_local.json"
echo "{\"engine\": {\"tp\": 2}, \"placement\": [{\"stage\": 0, \"group\": 1, \"worker\": \"127.0.0.1:$port\"}]}" \
  >"$tmp/heads.json"
kinds=${DIST_BENCH_KINDS:-local last first heads_local heads}

for round in $(seq "$rounds"); do
  for kind in $kinds; do
    "$troupe" bench --model "$model" --config "$tmp/$kind.json" -p 128,512 -n 128 -r 3 -o json "$@" 2>/dev/null \
      >"$tmp/$kind.$round.json"
  done
done

# Bytes per decoded token: a decode-only run of 256 tokens (one sequence, so one token per step), the worker's socket
# system calls counted by strace (the return values of sendto and recvfrom: CAF's BASP framing included).
n=256
if command -v strace >/dev/null; then
  for kind in $kinds; do
    case $kind in *local) continue ;; esac
    strace -f -p "$wpid" -e trace=sendto,recvfrom,sendmsg,recvmsg -o "$tmp/strace.$kind" 2>/dev/null &
    spid=$!
    sleep 0.5
    "$troupe" bench --model "$model" --config "$tmp/$kind.json" -p 0 -n $n -r 1 --no-warmup -o json "$@" >/dev/null 2>&1
    sleep 0.3
    kill "$spid"
    wait "$spid" 2>/dev/null
    awk -v kind=$kind '/(sendto|sendmsg)(\(| resumed)/ && / = [0-9]+$/ {s += $NF}
         /(recvfrom|recvmsg)(\(| resumed)/ && / = [0-9]+$/ {r += $NF} END {print kind, r, s}' "$tmp/strace.$kind" >>"$tmp/bytes"
  done
fi

python3 - "$tmp" "$rounds" $kinds <<'EOF'
import json, sys, statistics
tmp, rounds = sys.argv[1], int(sys.argv[2])
names = {"local": "in-process (pp 2)", "last": "stage 1 on a worker (logits cross)",
         "first": "stage 0 on a worker (activations only)", "heads_local": "in-process (tp 2)",
         "heads": "head group 1 of 2 on a worker (partial sums cross)"}
names = {k: v for k, v in names.items() if k in sys.argv[3:]}
rows = {}
for kind in names:
    per_test = {}
    for r in range(1, rounds + 1):
        d = json.load(open(f"{tmp}/{kind}.{r}.json"))
        for t in d["tests"]:
            key = f"pp{t['n_prompt']}" if t["n_prompt"] else f"tg{t['n_gen']}"
            per_test.setdefault(key, []).append(t["avg_ts"])
    rows[kind] = {k: (statistics.median(v), min(v), max(v)) for k, v in per_test.items()}
tests = list(rows[next(iter(names))])
print(f"tokens/s, median of {rounds} rounds (min-max); each round's figure is the mean of 3 samples")
print()
print("| placement | " + " | ".join(f"{t} tok/s" for t in tests) + " |")
print("|---|" + "---|" * len(tests))
for kind, label in names.items():
    print(f"| {label} | " + " | ".join(f"{rows[kind][t][0]:.1f} ({rows[kind][t][1]:.0f}-{rows[kind][t][2]:.0f})" for t in tests) + " |")
print()
import os
if os.path.exists(f"{tmp}/bytes"):
    print("| placement | decode: bytes to the worker per token | from the worker per token |")
    print("|---|---|---|")
    for line in open(f"{tmp}/bytes"):
        kind, rd, wr = line.split()
        # tg256: 256 steps of one token (the first samples from the one-token prompt), plus the attach handshake
        print(f"| {names[kind]} | {int(rd) / 256:.0f} B | {int(wr) / 256:.0f} B |")
EOF
