#!/usr/bin/env bash
# Head groups of a stage split across processes give the single-process greedy outputs (docs/distributed.md, "Head
# groups on workers"): troupe serve plus two `troupe worker` processes on loopback, each hosting head groups (KV
# heads, FFN rows and their KV cache) of a stage whose stage actor (norms, residual, the all-reduce) stays in the
# server: config/two-workers-heads.json (groups 1 and 2 of 3 on the two workers, group 0 here); every group remote;
# two groups of one stage on one worker with pp 2; a stage cut and a head-group split in one pipeline. Six prompts
# at once, every text equal to the single-process server's; the remote groups' compute time shows in /metrics.
# Impossible placements are refused. `kill -9` of a worker hosting a head group mid-stream ends the stream with an
# error event, the server stays up and a second (local) replica serves; after a restart the coordinator re-attaches
# and the texts are again those of one process; a stopped (silent) worker is caught by the step timeout. A remote
# shard that dies is respawned on its worker: only the request in that step fails. f16 activations serve.
# Usage: dist_heads.sh TROUPE_BINARY SOURCE_DIR
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

# ---- two workers ----
start_worker wa || exit 1
port_a=$wport
pid_a=$wpid
start_worker wb || exit 1
port_b=$wport
a=127.0.0.1:$port_a
b=127.0.0.1:$port_b

# run NAME ENGINE PLACEMENT EXPECTED_LOG [METRIC_LABELS]: serve with that config; every prompt's text equal to the
# reference; with METRIC_LABELS, that shard's step-time histogram counted steps
run() {
  printf '{"engine": %s, "placement": %s}\n' "$2" "$3" >"$tmp/$1.json"
  run_config "$1" "$4" "${5:-}"
}
run_config() {  # run_config NAME EXPECTED_LOG [METRIC_LABELS]: the same with the config file $tmp/NAME.json
  local name=$1
  if ! start_serve "$name" "$tmp/$name.json"; then
    check "$name: the server started with every worker attached" false
    return
  fi
  check "$name: the start-up log names the placement ($2)" grep -qF "placement: $2" "$tmp/$name.log"
  complete_all "$url" "$tmp/$name"
  check "$name: every greedy text equals the single-process one" same_texts "$tmp/$name" "$tmp/ref"
  if [ -n "$3" ]; then
    curl -s "$url/metrics" >"$tmp/$name.metrics"
    local n
    n=$(grep -F "troupe_shard_step_seconds_count{$3}" "$tmp/$name.metrics" | awk '{print $2}')
    check "$name: /metrics counts the remote shard's steps ($3: ${n:-none})" test "${n:-0}" -gt 0
  fi
  stop_pid "$spid"
  check "$name: the server stopped cleanly" grep -q stopped "$tmp/$name.log"
  check "$name: the links logged their traffic" grep -q "link to 127.0.0.1:[0-9]* (stage [0-9], head group [0-9]): [1-9]" \
    "$tmp/$name.log"
}

# The documented example, config/two-workers-heads.json, on this test's ports: groups 1 and 2 of 3 on the workers.
jq --arg a "$a" --arg b "$b" '.placement[0].worker = $a | .placement[1].worker = $b' \
  "$src/config/two-workers-heads.json" >"$tmp/example.json"
run_config example \
  "replica 0: stage 0 here (layers 0-29; head group 1 on $a, head group 2 on $b, 1 of its 3 here: two all-reduces per layer cross processes)" \
  'replica="0",stage="0",group="2"'
run all_remote '{"tp": 2}' "[{\"stage\": 0, \"group\": 0, \"worker\": \"$a\"}, {\"stage\": 0, \"group\": 1, \"worker\": \"$b\"}]" \
  "replica 0: stage 0 here (layers 0-29; head group 0 on $a, head group 1 on $b, 0 of its 2 here" \
  'replica="0",stage="0",group="0"'
run one_worker_pp2 '{"pp": 2, "tp": 3}' \
  "[{\"stage\": 0, \"groups\": [0, 1], \"worker\": \"$a\"}, {\"stage\": 1, \"group\": 2, \"worker\": \"$b\"}]" \
  "replica 0: stage 0 here (layers 0-14; head groups 0-1 on $a, 1 of its 3 here: two all-reduces per layer cross processes), stage 1 here (layers 15-29; head group 2 on $b, 2 of its 3 here" \
  'replica="0",stage="1",group="2"'
run stage_and_groups '{"pp": 2, "tp": 2}' \
  "[{\"stage\": 0, \"worker\": \"$a\"}, {\"stage\": 1, \"group\": 1, \"worker\": \"$b\"}]" \
  "replica 0: stage 0 on $a (layers 0-14), stage 1 here (layers 15-29; head group 1 on $b, 1 of its 2 here"
check "worker a logged head-group attaches" grep -q "worker: attached by .*head group 0 of stage 0" "$tmp/wa.log"

# f16 activations to a head group: half the bytes out (the partial sums still come back as f64); the texts may
# differ from one process's, so only that it serves is checked.
printf '{"engine": {"tp": 2}, "placement": [{"stage": 0, "group": 1, "worker": "%s"}], "remote": {"activations": "f16"}}\n' \
  "$b" >"$tmp/f16.json"
if start_serve f16 "$tmp/f16.json"; then
  text=$(complete "$url" "${prompts[0]}")
  check "f16: a completion succeeds ($(cat "$tmp/status") $text)" test "$(cat "$tmp/status")" = 200 -a ${#text} -gt 10
  stop_pid "$spid"
else
  check "f16: the server started" false
fi

# Placements the plan cannot have are refused at start-up with a message naming the problem.
bad_config '{"engine": {"tp": 3}, "placement": [{"stage": 0, "group": 3, "worker": "127.0.0.1:9"}]}' \
  "head groups 3..3 outside the plan's 0..2 (tp 3)"
bad_config '{"engine": {"tp": 3}, "placement": [{"stage": 0, "group": 1, "worker": "127.0.0.1:9"}, {"stage": 0, "groups": [1, 2], "worker": "127.0.0.1:8"}]}' \
  "head group 1 of stage 0 is placed twice"
bad_config '{"engine": {"pp": 2, "tp": 3}, "placement": [{"stage": 1, "worker": "127.0.0.1:9"}, {"stage": 1, "group": 0, "worker": "127.0.0.1:8"}]}' \
  "head groups can be placed only for stages that run in this process"
bad_config '{"engine": {"tp": 3}, "placement": [{"stage": 0, "groups": [2, 1], "worker": "127.0.0.1:9"}]}' \
  "groups[1]: expected a whole number from 2"
bad_config '{"engine": {"tp": 2}, "placement": [{"stage": 1, "group": 0, "worker": "127.0.0.1:9"}]}' \
  "outside the pipeline"
bad_config '{"engine": {"tp": 4}, "placement": [{"stage": 0, "group": 1, "worker": "127.0.0.1:9"}]}' \
  "tensor-parallel degree 4 must be 1 .. 3"  # the model's KV heads bound the groups, placed or not

# ---- kill -9 of a worker hosting a head group, mid-stream; then its return ----
cat >"$tmp/faults.json" <<EOF
{"engine": {"tp": 2, "replicas": 2},
 "placement": [{"replica": 0, "stage": 0, "group": 1, "worker": "$a"}],
 "remote": {"timeout_s": 4, "reconnect_s": 0.5}}
EOF
start_serve faults "$tmp/faults.json" || exit 1
stream "$url" 4000 "$tmp/stream1"  # replica 0 (both idle: the first)
check "the stream started" wait_chunks "$tmp/stream1" 5
kill -9 "$pid_a"
wait "$pid_a" 2>/dev/null
took=$(ended_within "$cpid" 10)
echo "kill -9 of a head group's worker: the stream ended after ${took:-?} tenths of a second"
check "the stream ended within 10 s of the kill (took ${took:-?} tenths)" test -n "$took"
check "the stream's last event is an error naming the unavailable replica" \
  bash -c "grep '^data: {' '$tmp/stream1' | tail -1 | grep -q '\"error\".*unavailable'"
check "the server is still up" kill -0 "$spid"
code=$(curl -s -o "$tmp/health_down" -w '%{http_code}' "$url/health")
check "/health 200 'degraded' naming the worker ($code $(cat "$tmp/health_down"))" \
  bash -c "[ $code = 200 ] && grep -q degraded '$tmp/health_down' && grep -q '$a' '$tmp/health_down'"
text=$(complete "$url" "${prompts[1]}")
check "a request meanwhile is served by the local replica ($(cat "$tmp/status") $text)" \
  bash -c "[ $(cat "$tmp/status") = 200 ] && [ '$text' = '$(cat "$tmp/ref.1")' ]"
check "the coordinator logged the head group's worker going down" \
  grep -q "replica 0: worker $a (stage 0, head group 1): went down" "$tmp/faults.log"
port_for_worker=$port_a start_worker wa2 || exit 1
check "the coordinator re-attached within 15 s" \
  wait_log "$tmp/faults.log" "replica 0: every worker attached again" 150 >/dev/null
for _ in $(seq 50); do curl -s "$url/health" | grep -q "$a" || break; sleep 0.1; done
stream "$url" 40 "$tmp/stream2"  # replica 0 again (both idle)
wait "$cpid"
check "a stream after the restart finishes" grep -q '"finish_reason":"length"' "$tmp/stream2"
check "the restarted worker served its head group" grep -q "worker: attached by .*head group 1 of stage 0" "$tmp/wa2.log"
complete_all "$url" "$tmp/back"
check "greedy texts after the restart equal one process's" same_texts "$tmp/back" "$tmp/ref"
# A worker that goes silent (SIGSTOP: connection open, no answers): the group link's step timeout (4 s here).
stream "$url" 4000 "$tmp/stream3"
check "another stream started" wait_chunks "$tmp/stream3" 3
kill -STOP "$wpid"
took=$(ended_within "$cpid" 20)
echo "SIGSTOP of a head group's worker: the stream ended after ${took:-?} tenths of a second"
check "a stream on a stopped head group's worker ends within 20 s (took ${took:-?} tenths)" test -n "$took"
check "with an error event" bash -c "grep '^data: {' '$tmp/stream3' | tail -1 | grep -q '\"error\"'"
check "the coordinator logged the step timeout" grep -q "head group 1): no answer to step" "$tmp/faults.log"
kill -CONT "$wpid"
stop_pid "$spid"

# ---- a remote shard that dies: respawned on the worker; only the request in that step fails ----
echo "{\"engine\": {\"tp\": 2}, \"placement\": [{\"stage\": 0, \"group\": 1, \"worker\": \"$b\"}]}" >"$tmp/shard.json"
TROUPE_FAULT=0:0:1:5 start_serve shard "$tmp/shard.json" || exit 1
complete "$url" "${prompts[1]}" >/dev/null
check "the request whose step lost the remote shard fails with 503 ($(cat "$tmp/status") $(cat "$tmp/body"))" \
  bash -c "[ $(cat "$tmp/status") = 503 ] && grep -q 'shard 1 of stage 0 died' '$tmp/body'"
text=$(complete "$url" "${prompts[1]}")
check "the next request succeeds with the single-process text ($text)" test "$text" = "$(cat "$tmp/ref.1")"
stop_pid "$spid"
finish
