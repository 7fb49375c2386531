#!/usr/bin/env bash
# The coordinator and a worker in two network namespaces joined by a veth pair, so the traffic really crosses an
# interface (docs/distributed.md): the worker listens on its veth address, which needs a secret; greedy texts equal
# one process's; the bytes show up on the veth counters; cutting the link (veth down: no FIN, no RST) ends a running
# stream with an error by the step timeout while the server stays up, and once the link is back the coordinator
# re-attaches by itself; a head group placed across the veth gives the same texts. Needs root and iproute2; prints
# SKIP and passes without them.
# Usage: dist_netns.sh TROUPE_BINARY SOURCE_DIR
set -u
real_troupe=$(realpath "$1")
src=$(realpath "$2")
model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
tmp=$(mktemp -d)
t_start=$SECONDS
troupe=$real_troupe
source "$src/tests/cli/lib/dist.sh"
cd "$tmp" || exit 1
unset TROUPE_SECRET

id=$(( $$ % 100000 ))
ns_c=troupe_c$id
ns_w=troupe_w$id
net=10.$((200 + $$ % 50)).$(( ($$ / 50) % 250 ))
if [ "$(id -u)" != 0 ] || ! ip netns add "$ns_c" 2>/dev/null; then
  echo "SKIP: network namespaces need root and iproute2"
  exit 0
fi
trap 'cleanup; ip netns del "$ns_c" 2>/dev/null; ip netns del "$ns_w" 2>/dev/null' EXIT
ip netns add "$ns_w"
ip link add "tc$id" netns "$ns_c" type veth peer name "tw$id" netns "$ns_w"
ip -n "$ns_c" addr add "$net.1/24" dev "tc$id"
ip -n "$ns_w" addr add "$net.2/24" dev "tw$id"
for ns in "$ns_c" "$ns_w"; do ip -n "$ns" link set lo up; done
ip -n "$ns_c" link set "tc$id" up
ip -n "$ns_w" link set "tw$id" up

# Each troupe runs inside its namespace (ip netns exec execs it: the pid stays the one the helpers kill); curl runs
# in the coordinator's, where the server listens.
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$ns_c" "$real_troupe" >"$tmp/in_c"
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$ns_w" "$real_troupe" >"$tmp/in_w"
chmod +x "$tmp/in_c" "$tmp/in_w"
curl() { ip netns exec "$ns_c" /usr/bin/curl "$@"; }

# ---- reference: one process (in the coordinator's namespace) ----
troupe=$tmp/in_c
echo '{}' >"$tmp/local.json"
start_serve local "$tmp/local.json" || exit 1
complete_all "$url" "$tmp/ref"
stop_pid "$spid"

# ---- the worker on its veth address: a secret is required there ----
troupe=$tmp/in_w
out=$("$troupe" worker --listen "$net.2:9101" --model "$model" 2>&1)
check "a worker on $net.2 without a secret refuses to start" grep -q "refusing to listen" <<<"$out"
listen=$net.2:9101 start_worker w --secret s3cret || exit 1
wpid1=$wpid
cat >"$tmp/placed.json" <<EOF
{"engine": {"pp": 3}, "placement": [{"stages": [1, 2], "worker": "$net.2:9101"}],
 "remote": {"timeout_s": 3, "reconnect_s": 0.5}}
EOF
troupe=$tmp/in_c
rx0=$(ip -n "$ns_w" -s -j link show "tw$id" | jq '.[0].stats64.rx.bytes')
TROUPE_SECRET=s3cret start_serve placed "$tmp/placed.json" || exit 1
complete_all "$url" "$tmp/net"
check "greedy texts across the veth equal one process's" same_texts "$tmp/net" "$tmp/ref"
rx1=$(ip -n "$ns_w" -s -j link show "tw$id" | jq '.[0].stats64.rx.bytes')
tx1=$(ip -n "$ns_w" -s -j link show "tw$id" | jq '.[0].stats64.tx.bytes')
echo "veth: the worker received $((rx1 - rx0)) bytes and sent $tx1"
check "the activations crossed the veth (received $((rx1 - rx0)) bytes, sent $tx1)" \
  test $((rx1 - rx0)) -gt 100000 -a "$tx1" -gt 1000000

# ---- the link cut: no FIN, no RST ----
curl -s -N -H 'Content-Type: application/json' \
  --data-binary '{"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": true, "ignore_eos": true}' \
  "$url/v1/completions" >"$tmp/stream" &
cpid=$!
for _ in $(seq 300); do n=$(grep -c '^data: {' "$tmp/stream" 2>/dev/null); [ "${n:-0}" -ge 3 ] && break; sleep 0.1; done
ip -n "$ns_w" link set "tw$id" down
took=
for t in $(seq 150); do kill -0 "$cpid" 2>/dev/null || { took=$t; break; }; sleep 0.1; done
echo "link down: the stream ended after ${took:-?} tenths of a second"
check "the stream ended within 15 s of the link going down" test -n "$took"
check "with an error event" bash -c "grep '^data: {' '$tmp/stream' | tail -1 | grep -q '\"error\"'"
check "the server is still up" kill -0 "$spid"
code=$(curl -s -o "$tmp/h" -w '%{http_code}' "$url/health")
check "/health 503 unavailable meanwhile ($code $(cat "$tmp/h"))" test "$code" = 503
ip -n "$ns_w" link set "tw$id" up
check "after the link is back the coordinator re-attaches within 30 s" \
  wait_log "$tmp/placed.log" "every worker attached again" 300 >/dev/null
complete_all "$url" "$tmp/back"
check "greedy texts after the re-attach equal one process's" same_texts "$tmp/back" "$tmp/ref"
stop_pid "$spid"

# ---- a head group across the veth: the stage stays here, its group 1's shard (and KV cache) on the worker ----
cat >"$tmp/heads.json" <<EOF
{"engine": {"tp": 2}, "placement": [{"stage": 0, "group": 1, "worker": "$net.2:9101"}],
 "remote": {"timeout_s": 10}}
EOF
rx0=$(ip -n "$ns_w" -s -j link show "tw$id" | jq '.[0].stats64.rx.bytes')
TROUPE_SECRET=s3cret start_serve heads "$tmp/heads.json" || exit 1
complete_all "$url" "$tmp/heads"
check "greedy texts with a head group across the veth equal one process's" same_texts "$tmp/heads" "$tmp/ref"
rx1=$(ip -n "$ns_w" -s -j link show "tw$id" | jq '.[0].stats64.rx.bytes')
echo "veth, head group: the worker received $((rx1 - rx0)) bytes"
check "the head group's activations crossed the veth ($((rx1 - rx0)) bytes)" test $((rx1 - rx0)) -gt 1000000
stop_pid "$spid"
check "the worker is still up" kill -0 "$wpid1"
finish
