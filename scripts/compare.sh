#!/usr/bin/env bash
# Troupe against llama.cpp on this machine, in one run, and the report: docs/benchmarks.md (tables), .png (chart),
# .json (every figure). In the order it runs:
#   1. setup (scripts/setup.sh --bench), Troupe's build (target troupe), the model (scripts/fetch-model.sh)
#   2. llama.cpp's llama-bench and llama-server from PyPI's llama-cpp-python sdist, its fastest working build on this
#      CPU (scripts/build-llama.sh; cached under .cache/llama.cpp)
#   3. memory read bandwidth at each thread count (bench/membw.c): the decode limit
#   4. engine: `troupe bench` and `llama-bench` (pp128, pp512, tg128) at each thread count, alternating the two
#      programs run by run (the first of each pair alternates by round), under /usr/bin/time -v (peak RSS)
#   5. serving: `troupe serve` and `llama-server -np SLOTS -cb` with the same threads and KV capacity, alternating by
#      round; bench/serve_bench.py at each concurrency, streaming, OUTPUT_LEN tokens per request
#   6. bench/compare.py report: medians, ratios, targets, machine and build flags
#
#   scripts/compare.sh                 the full run: about 20 minutes on 2 cores once llama.cpp is built (its two
#                                      builds take about 25 minutes the first time, then come from the cache)
#   scripts/compare.sh --quick         one round, 2 repetitions, 2 requests per client: about 4 minutes, noisy
# Options: --rounds N (engine rounds, 3), --reps N (samples per bench run, 5), --serve-rounds N (3),
#   --per-client N (requests per client per serving run, 4), --threads 1,2, --concurrency 1,4,16, --serve-threads T
#   (default: the largest of --threads), --slots N (llama-server -np, troupe --max-running; 16), --output-len N (64),
#   --model GGUF, --troupe BINARY (skip building), --build-dir DIR (build), --llama-compiler auto|clang|gcc,
#   --note TEXT (a line at the top of the report), --out-dir DIR (docs), --no-setup, --no-engine, --no-serve.
# Intermediate results stay in .cache/compare/DATE-TIME/ (git-ignored).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command_line=scripts/compare.sh
if [ $# -gt 0 ]; then command_line+=$(printf ' %q' "$@"); fi

rounds=3 reps=5 serve_rounds=3 per_client=4 threads=1,2 concurrency=1,4,16 serve_threads="" slots=16 output_len=64
input_len=32 model=models/SmolLM2-135M-Instruct.Q4_1.gguf troupe="" build_dir=build llama_compiler=auto note=""
out_dir=docs setup=1 do_engine=1 do_serve=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) rounds=1 reps=2 serve_rounds=1 per_client=2; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --serve-rounds) serve_rounds=$2; shift 2 ;;
    --per-client) per_client=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --serve-threads) serve_threads=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --output-len) output_len=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --troupe) troupe=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --llama-compiler) llama_compiler=$2; shift 2 ;;
    --note) note=$2; shift 2 ;;
    --out-dir) out_dir=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    --no-engine) do_engine=0; shift ;;
    --no-serve) do_serve=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "compare: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a thread_list <<<"$threads"
IFS=, read -r -a client_list <<<"$concurrency"
[ -n "$serve_threads" ] || serve_threads=$(printf '%s\n' "${thread_list[@]}" | sort -n | tail -n1)
log() { echo "compare: $*" >&2; }

# ---- 1. setup, Troupe, the model ----
if [ $setup -eq 1 ]; then scripts/setup.sh --bench; fi
if [ -z "$troupe" ]; then
  log "building troupe in $build_dir"
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" -j "$(nproc)" --target troupe >/dev/null
  troupe=$build_dir/troupe
fi
[ -x "$troupe" ] || { log "no troupe binary at $troupe"; exit 1; }
if [ "$model" = models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then model=$(scripts/fetch-model.sh); fi
model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")

# The report's Python needs matplotlib; Debian's package serves /usr/bin/python3, which may not be the python3 on PATH.
py=python3
if ! python3 -c 'import matplotlib' 2>/dev/null && /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  py=/usr/bin/python3
fi

# ---- 2. llama.cpp ----
llama_bin=$(scripts/build-llama.sh --compiler "$llama_compiler" --model "$model")
llama_env=$root/.cache/llama.cpp/selected.env

started=$(date -u '+%Y-%m-%d %H:%M UTC')
results=$root/.cache/compare/$(date +%Y%m%d-%H%M%S)
mkdir -p "$results/engine" "$results/serve"
log "results in $results"
kv_positions=$((slots * 512))
cat >"$results/info.json" <<EOF
{"threads": [$threads], "concurrency": [$concurrency], "serve_threads": $serve_threads, "slots": $slots,
 "output_len": $output_len, "input_len": $input_len, "prompts_per_client": $per_client, "rounds": $rounds,
 "reps": $reps, "serve_rounds": $serve_rounds, "kv_positions": $kv_positions, "tests": ["pp128", "pp512", "tg128"],
 "model": "$model", "model_bytes": $(stat -c %s "$model"), "date": "$started"}
EOF

# ---- 3. memory bandwidth (again at the end: the report keeps the best, the machine's when nothing else ran) ----
cc -O3 -march=native -fopenmp bench/membw.c -o "$results/membw"
measure_bandwidth() {  # TAG
  for t in "${thread_list[@]}"; do
    "$results/membw" "$t" 1024 8 >"$results/membw-t$t-$1.txt" 2>/dev/null
    log "read bandwidth, $t thread(s): $(cat "$results/membw-t$t-$1.txt") GB/s"
  done
}
measure_bandwidth start

# ---- 4. engine ----
run_troupe_bench() {  # THREADS ROUND
  /usr/bin/time -v -o "$results/engine/troupe-t$1-r$2.time" \
    "$troupe" bench -m "$model" -p 128,512 -n 128 -r "$reps" -t "$1" -o json \
    >"$results/engine/troupe-t$1-r$2.json" 2>"$results/engine/troupe-t$1-r$2.log"
}
run_llama_bench() {  # THREADS ROUND
  /usr/bin/time -v -o "$results/engine/llama-t$1-r$2.time" \
    "$llama_bin/llama-bench" -m "$model" -p 128,512 -n 128 -r "$reps" -t "$1" -o json \
    >"$results/engine/llama-t$1-r$2.json" 2>"$results/engine/llama-t$1-r$2.log"
}
if [ $do_engine -eq 1 ]; then
  for ((r = 1; r <= rounds; r++)); do
    order=(troupe llama)
    if ((r % 2 == 0)); then order=(llama troupe); fi
    for t in "${thread_list[@]}"; do
      for program in "${order[@]}"; do
        "run_${program}_bench" "$t" "$r" || { log "$program bench failed: $(tail -n 3 "$results/engine/$program-t$t-r$r.log")"; exit 1; }
        log "engine round $r, $t thread(s), $program: $(python3 bench/compare.py summary "$results/engine/$program-t$t-r$r.json")"
      done
    done
  done
fi

# ---- 5. serving ----
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
server_pid=""
stop_server() {  # SIGTERM the server (the child of /usr/bin/time), then wait for time to write its report
  local time_pid=$1 child
  child=$(pgrep -P "$time_pid" || true)
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
  wait "$time_pid" 2>/dev/null || true
  server_pid=""
}
trap '[ -z "$server_pid" ] || stop_server "$server_pid"' EXIT
start_server() {  # NAME ROUND PORT: starts the server under /usr/bin/time, waits for /health
  local name=$1 round=$2 port=$3 tp
  tp=$($py bench/compare.py tp "$model" "$serve_threads")
  if [ "$name" = troupe ]; then
    /usr/bin/time -v -o "$results/serve/troupe-r$round.time" "$troupe" serve -m "$model" --host 127.0.0.1 \
      --port "$port" --threads "$serve_threads" --tp "$tp" --max-running "$slots" \
      --kv-blocks $((kv_positions / 16)) --block-size 16 >"$results/serve/troupe-r$round.log" 2>&1 &
  else
    /usr/bin/time -v -o "$results/serve/llama-r$round.time" "$llama_bin/llama-server" -m "$model" \
      --host 127.0.0.1 --port "$port" -t "$serve_threads" -tb "$serve_threads" -np "$slots" -cb \
      -c "$kv_positions" >"$results/serve/llama-r$round.log" 2>&1 &
  fi
  server_pid=$!
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  log "$name did not become healthy: $(tail -n 5 "$results/serve/$name-r$round.log")"
  return 1
}
if [ $do_serve -eq 1 ]; then
  bias=$(python3 bench/compare.py no-eog-bias "$model")
  for ((r = 1; r <= serve_rounds; r++)); do
    order=(troupe llama)
    if ((r % 2 == 0)); then order=(llama troupe); fi
    for name in "${order[@]}"; do
      port=$(free_port)
      start_server "$name" "$r" "$port"
      for c in "${client_list[@]}"; do
        python3 bench/serve_bench.py --base-url "http://127.0.0.1:$port" --label "$name" --concurrency "$c" \
          --num-prompts $((c * per_client)) --input-len "$input_len" --output-len "$output_len" --ignore-eos \
          --extra-body "{\"logit_bias\": $bias}" --seed "$r" --json "$results/serve/$name-r$r-c$c.json" \
          --markdown /dev/null 2>>"$results/serve/$name-r$r-bench.log" ||
          log "serve_bench against $name at $c clients reported failures (see $results/serve/$name-r$r-bench.log)"
        log "serving round $r, $name, $c client(s): $(python3 bench/compare.py summary "$results/serve/$name-r$r-c$c.json")"
      done
      stop_server "$server_pid"
    done
  done
fi

measure_bandwidth end

# ---- 6. the report ----
mkdir -p "$out_dir"
$py bench/compare.py report "$results" --md "$out_dir/benchmarks.md" --png "$out_dir/benchmarks.png" \
  --json "$out_dir/benchmarks.json" --command "$command_line" --note "$note" --llama-env "$llama_env" \
  --troupe-build "$(dirname "$troupe")"
