#!/usr/bin/env bash
# A pipeline split across processes gives the single-process greedy outputs (docs/distributed.md): troupe serve plus
# two `troupe worker` processes on loopback, for several placements (config/two-workers.json: first and middle stage
# remote; middle and last stage remote; first and last remote with two head groups inside each; a range of stages on
# one worker; a whole replica on a worker; two replicas, each whole on its own worker), six prompts sent at once,
# every text equal to the single-process server's and to `troupe generate`'s. The start-up log names the placement;
# both workers log the attach. Head groups split across processes: dist_heads.sh.
# Usage: dist_pipeline.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
src=$(realpath "$2")
model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
tmp=$(mktemp -d)
t_start=$SECONDS
source "$src/tests/cli/lib/dist.sh"
cd "$tmp" || exit 1

# ---- the reference: one process ----
reference || exit 1
gen=$("$troupe" generate --model "$model" --prompt "${prompts[0]}" --temp 0 -n 24 2>/dev/null)
check "troupe generate gives the reference text ('$gen' vs $(cat "$tmp/ref.0"))" \
  test "$(jq -n -c --arg t "$gen" '$t')" = "$(cat "$tmp/ref.0")"

# ---- two workers ----
start_worker wa || exit 1
port_a=$wport
pid_a=$wpid
start_worker wb || exit 1
port_b=$wport
pid_b=$wpid

# run NAME ENGINE PLACEMENT EXPECTED_LOG: serve with that config; every prompt's text equal to the reference
run() {
  printf '{"engine": %s, "placement": %s}\n' "$2" "$3" >"$tmp/$1.json"
  run_config "$1" "$4"
}
# run_config NAME EXPECTED_LOG: the same with the config file $tmp/NAME.json
run_config() {
  local name=$1
  set -- "$1" "" "" "$2"
  if ! start_serve "$name" "$tmp/$name.json"; then
    check "$name: the server started with every worker attached" false
    return
  fi
  check "$name: the start-up log names the placement ($4)" grep -qF "placement: $4" "$tmp/$name.log"
  complete_all "$url" "$tmp/$name"
  check "$name: every greedy text equals the single-process one" same_texts "$tmp/$name" "$tmp/ref"
  curl -s "$url/metrics" >"$tmp/$name.metrics"
  stop_pid "$spid"
  check "$name: the server stopped cleanly" grep -q stopped "$tmp/$name.log"
}

# The documented example, config/two-workers.json, on this test's ports.
jq --arg a "127.0.0.1:$port_a" --arg b "127.0.0.1:$port_b" '.placement[0].worker = $a | .placement[1].worker = $b' \
  "$src/config/two-workers.json" >"$tmp/example.json"
run_config example \
  "replica 0: stage 0 on 127.0.0.1:$port_a (layers 0-9), stage 1 on 127.0.0.1:$port_b (layers 10-19), stage 2 here (layers 20-29)"
n=$(grep -F 'troupe_shard_step_seconds_count{replica="0",stage="0",group="0"}' "$tmp/example.metrics" | awk '{print $2}')
check "/metrics counts the steps of a shard on a worker (stage 0: ${n:-none})" test "${n:-0}" -gt 0
run middle_last '{"pp": 3}' \
  "[{\"stage\": 1, \"worker\": \"127.0.0.1:$port_a\"}, {\"stage\": 2, \"worker\": \"127.0.0.1:$port_b\"}]" \
  "replica 0: stage 0 here (layers 0-9), stage 1 on 127.0.0.1:$port_a (layers 10-19), stage 2 on 127.0.0.1:$port_b (layers 20-29)"
run first_last_tp2 '{"pp": 3, "tp": 2}' \
  "[{\"stage\": 0, \"worker\": \"127.0.0.1:$port_a\"}, {\"stage\": 2, \"worker\": \"127.0.0.1:$port_b\"}]" \
  "replica 0: stage 0 on 127.0.0.1:$port_a"
run range '{"pp": 3}' "[{\"stages\": [1, 2], \"worker\": \"127.0.0.1:$port_a\"}]" \
  "replica 0: stage 0 here (layers 0-9), stages 1-2 on 127.0.0.1:$port_a (layers 10-29)"
run replica '{"pp": 2, "replicas": 2}' "[{\"replica\": 1, \"worker\": \"127.0.0.1:$port_b\"}]" \
  "replica 0: stages 0-1 here (layers 0-29); replica 1: stages 0-1 on 127.0.0.1:$port_b"
check "the replica run sent requests to the worker's replica" grep -q "link to 127.0.0.1:$port_b (stages 0..1): [1-9]" "$tmp/replica.log"
# Data parallel across workers: each replica whole on its own worker; the server only schedules and samples.
run replicas_on_workers '{"pp": 1, "replicas": 2}' \
  "[{\"replica\": 0, \"worker\": \"127.0.0.1:$port_a\"}, {\"replica\": 1, \"worker\": \"127.0.0.1:$port_b\"}]" \
  "replica 0: stage 0 on 127.0.0.1:$port_a (layers 0-29); replica 1: stage 0 on 127.0.0.1:$port_b (layers 0-29)"
check "both workers' replicas served requests" bash -c "grep -q 'link to 127.0.0.1:$port_a (stages 0..0): [1-9]' '$tmp/replicas_on_workers.log' &&
  grep -q 'link to 127.0.0.1:$port_b (stages 0..0): [1-9]' '$tmp/replicas_on_workers.log'"

# f16 activations: half the bytes; the texts may differ from one process's, so only that it serves is checked.
printf '{"engine": {"pp": 2}, "placement": [{"stage": 1, "worker": "127.0.0.1:%s"}], "remote": {"activations": "f16"}}\n' \
  "$port_a" >"$tmp/f16.json"
if start_serve f16 "$tmp/f16.json"; then
  check "f16: the start-up log says so" grep -q "activations cross as f16" "$tmp/f16.log"
  text=$(complete "$url" "${prompts[0]}")
  check "f16: a completion succeeds ($(cat "$tmp/status") $text)" test "$(cat "$tmp/status")" = 200 -a ${#text} -gt 10
  stop_pid "$spid"
fi

# Placements the plan cannot have are refused at start-up with a message naming the problem.
bad_config '{"engine": {"pp": 2}, "placement": [{"stage": 2, "worker": "127.0.0.1:9"}]}' "outside the pipeline"
bad_config '{"engine": {"pp": 2}, "placement": [{"stage": 1, "worker": "127.0.0.1:9"}, {"stage": 1, "worker": "127.0.0.1:8"}]}' \
  "placed twice"
bad_config '{"placement": [{"stage": 0}]}' '"worker": "HOST:PORT" is required'
bad_config '{"placement": [{"stage": 0, "worker": "nohost"}]}' "expected HOST:PORT"
bad_config '{"placement": [{"stage": 0, "worker": "127.0.0.1:1", "gpu": 3}]}' "unknown key gpu"
bad_config '{"remote": {"activations": "int8"}}' "bad value"
bad_config '{"engine": {"replicas": 1}, "placement": [{"replica": 1, "worker": "127.0.0.1:9"}]}' "replica 1 does not exist"

check "worker a logged its attaches" test "$(grep -c 'worker: attached by' "$tmp/wa.log")" -ge 3
check "worker b logged its attaches" test "$(grep -c 'worker: attached by' "$tmp/wb.log")" -ge 3
check "worker a released every attach" grep -q 'an attach ended .*; 0 active' "$tmp/wa.log"
kill -TERM "$pid_a" "$pid_b"
wait "$pid_a"
rc_a=$?
wait "$pid_b"
rc_b=$?
check "the workers exit 0 on SIGTERM ($rc_a, $rc_b)" test "$rc_a" -eq 0 -a "$rc_b" -eq 0
finish
