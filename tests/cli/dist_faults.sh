#!/usr/bin/env bash
# A worker dies under a running stream and comes back (docs/distributed.md, "Faults"): serve with stage 1 of 2 on a
# worker; `kill -9` of the worker mid-stream ends the stream with an error event within a few seconds; the server
# stays up, /health says 503 "unavailable" naming the worker, a new request is refused at once with 503; a request
# on a second, local replica still succeeds meanwhile; after the worker restarts on the same port the coordinator
# re-attaches by itself and greedy outputs are again those of one process. A worker stopped with SIGSTOP (silent,
# connection open) is declared down by the step timeout. A shard that dies on a worker (TROUPE_FAULT) is respawned
# there: only the request in that step fails.
# Usage: dist_faults.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
src=$(realpath "$2")
model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
tmp=$(mktemp -d)
t_start=$SECONDS
source "$src/tests/cli/lib/dist.sh"
cd "$tmp" || exit 1

reference || exit 1

start_worker w1 || exit 1
wpid1=$wpid
port=$wport
cat >"$tmp/placed.json" <<EOF
{"engine": {"pp": 2, "replicas": 2},
 "placement": [{"replica": 0, "stage": 1, "worker": "127.0.0.1:$port"}],
 "remote": {"timeout_s": 4, "reconnect_s": 0.5}}
EOF
start_serve placed "$tmp/placed.json" || exit 1

# ---- kill -9 mid-stream ----
# Replica 0 has the worker; the least-loaded choice sends the first request there (both idle: replica 0).
stream "$url" 4000 "$tmp/stream1"
check "the stream started" wait_chunks "$tmp/stream1" 5
kill -9 "$wpid1"
wait "$wpid1" 2>/dev/null
t_kill=$SECONDS
took=$(ended_within "$cpid" 10)
echo "kill -9: the stream ended after ${took:-?} tenths of a second"
check "the stream ended within 10 s of the kill (took ${took:-?} tenths)" test -n "$took"
check "the stream's last event is an error naming the unavailable replica" \
  bash -c "grep '^data: {' '$tmp/stream1' | tail -1 | grep -q '\"error\".*unavailable'"
check "the stream was not finished normally" bash -c "! grep -q '\"finish_reason\":\"length\"' '$tmp/stream1'"
check "the server is still up" kill -0 "$spid"
code=$(curl -s -o "$tmp/health_down" -w '%{http_code}' "$url/health")
check "/health still 200 with one replica left, 'degraded' naming the worker ($code $(cat "$tmp/health_down"))" \
  bash -c "[ $code = 200 ] && grep -q degraded '$tmp/health_down' && grep -q '127.0.0.1:$port' '$tmp/health_down'"
# The surviving (local) replica serves; every request goes there while replica 0 is down.
text=$(complete "$url" "${prompts[1]}")
check "a request meanwhile is served by the local replica ($(cat "$tmp/status") $text)" \
  bash -c "[ $(cat "$tmp/status") = 200 ] && [ '$text' = '$(cat "$tmp/ref.1")' ]"
check "the coordinator logged the worker going down" grep -q "replica 0: worker 127.0.0.1:$port .*went down" "$tmp/placed.log"

# ---- the worker comes back on the same port ----
port_for_worker=$port start_worker w1 || exit 1
wpid2=$wpid
check "the coordinator re-attached within 15 s" \
  wait_log "$tmp/placed.log" "replica 0: every worker attached again" 150 >/dev/null
for _ in $(seq 50); do grep -q '"ok"\|degraded' <(curl -s "$url/health") && break; sleep 0.1; done
check "/health no longer names the worker" bash -c "! curl -s '$url/health' | grep -q '127.0.0.1:$port'"
stream "$url" 40 "$tmp/stream2"  # replica 0 (both idle again)
wait "$cpid"
check "a stream after the restart finishes" grep -q '"finish_reason":"length"' "$tmp/stream2"
check "the worker served it" test "$(grep -c 'worker: attached by' "$tmp/w1.log")" -ge 2
complete_all "$url" "$tmp/back"
check "greedy texts after the restart equal one process's" same_texts "$tmp/back" "$tmp/ref"

# ---- a worker that goes silent (SIGSTOP): the step timeout, then the heartbeat ----
stream "$url" 4000 "$tmp/stream3"
check "another stream started" wait_chunks "$tmp/stream3" 3
kill -STOP "$wpid2"
took=$(ended_within "$cpid" 20)
echo "SIGSTOP: the stream ended after ${took:-?} tenths of a second"
check "a stream on a stopped worker ends within 20 s (took ${took:-?} tenths)" test -n "$took"
check "with an error event" bash -c "grep '^data: {' '$tmp/stream3' | tail -1 | grep -q '\"error\"'"
check "the server is still up after the silent worker" kill -0 "$spid"
kill -CONT "$wpid2"

stop_pid "$spid"
check "the server stopped cleanly" grep -q stopped "$tmp/placed.log"

# ---- a shard that dies on the worker: respawned there; only the request in that step fails ----
start_worker w2 || exit 1
echo "{\"engine\": {\"pp\": 2, \"tp\": 2}, \"placement\": [{\"stage\": 1, \"worker\": \"127.0.0.1:$wport\"}]}" \
  >"$tmp/shard.json"
TROUPE_FAULT=0:1:1:5 start_serve shard "$tmp/shard.json" || exit 1
complete "$url" "${prompts[1]}" >/dev/null
check "the request whose step lost a remote shard fails with 503 ($(cat "$tmp/status"))" \
  bash -c "[ $(cat "$tmp/status") = 503 ] && grep -q 'shard 1 of stage 1 died' '$tmp/body'"
text=$(complete "$url" "${prompts[1]}")
check "the next request succeeds with the single-process text ($text)" test "$text" = "$(cat "$tmp/ref.1")"
stop_pid "$spid"
finish
