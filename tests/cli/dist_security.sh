#!/usr/bin/env bash
# Who may use a worker (docs/distributed.md, "Security"): a worker off loopback refuses to start without a secret; a
# coordinator with a wrong secret or none is refused (the worker logs it, the coordinator's /health says 503 and
# why), one with the right secret serves; a coordinator whose model file differs by one byte is refused with "model
# mismatch"; a CAF peer without the secret cannot kill or confuse the gate (troupe-hostile-peer); random bytes,
# truncated and fake protocol headers and a burst of connections to the worker port do not crash it, and a real
# coordinator still attaches afterwards.
# Usage: dist_security.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
src=$(realpath "$2")
model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
hostile=$(dirname "$troupe")/troupe-hostile-peer
tmp=$(mktemp -d)
t_start=$SECONDS
source "$src/tests/cli/lib/dist.sh"
cd "$tmp" || exit 1
unset TROUPE_SECRET

# ---- start-up: off loopback only with a secret ----
out=$("$troupe" worker --listen 0.0.0.0:0 --model "$model" 2>&1)
rc=$?
check "a worker on 0.0.0.0 without a secret refuses to start (rc $rc: $out)" \
  bash -c "[ $rc -ne 0 ] && grep -q 'refusing to listen on 0.0.0.0 without a shared secret' <<<'$out'"
listen=0.0.0.0:0 start_worker open --secret s3cret && check "with a secret it starts on 0.0.0.0" true
kill -9 "$wpid"
wait "$wpid" 2>/dev/null

# ---- a worker with a secret ----
start_worker w --secret s3cret || exit 1
port=$wport
placement="[{\"stage\": 1, \"worker\": \"127.0.0.1:$port\"}]"
echo "{\"engine\": {\"pp\": 2}, \"placement\": $placement, \"remote\": {\"reconnect_s\": 0.5}}" >"$tmp/placed.json"

# try_coordinator NAME EXPECTED_DETAIL: serve whose worker must stay unattached: /health 503 naming the reason, a
# completion refused with 503
try_coordinator() {
  wait_health=any start_serve "$1" "$tmp/placed.json" || { check "$1: the server started" false; return; }
  local code
  code=$(curl -s -o "$tmp/$1.h" -w '%{http_code}' "$url/health")
  check "$1: /health 503 'unavailable' saying '$2' ($code $(cat "$tmp/$1.h"))" \
    bash -c "[ $code = 503 ] && grep -q unavailable '$tmp/$1.h' && grep -q '$2' '$tmp/$1.h'"
  complete "$url" "Hello" >/dev/null
  check "$1: a completion is refused with 503 ($(cat "$tmp/status"))" test "$(cat "$tmp/status")" = 503
  stop_pid "$spid"
}
TROUPE_SECRET=wrong try_coordinator wrong_secret "failed authentication"
try_coordinator no_secret "failed authentication"
# The worker proves the secret first, so these coordinators stop before they attach (the worker refuses attaches
# with a wrong proof: troupe-hostile-peer below).
for name in wrong_secret no_secret; do
  check "$name: the coordinator logged why it could not attach" \
    grep -q "worker 127.0.0.1:$port (stages 1..1): the worker failed authentication" "$tmp/$name.log"
done
check "nothing was attached on the worker" bash -c "! grep -q 'worker: attached by' '$tmp/w.log'"

# ---- a CAF peer without the secret ----
if [ -x "$hostile" ]; then
  "$hostile" 127.0.0.1 "$port" >"$tmp/hostile.out" 2>&1
  rc=$?
  check "troupe-hostile-peer: the gate survived every probe (rc $rc: $(grep FAIL "$tmp/hostile.out"))" test $rc -eq 0
  check "the worker logged the dropped messages" grep -q "troupe_gate: dropped a message" "$tmp/w.log"
  check "the worker logged the refused attach" grep -q "refused an attach from .*: authentication failed" "$tmp/w.log"
else
  echo "SKIP: troupe-hostile-peer is not built next to troupe (a build of only some targets): the gate probes"
fi

# ---- garbage on the worker port ----
python3 - "$port" >"$tmp/garbage.out" 2>&1 <<'EOF'
import os, random, socket, struct, sys, time
port = int(sys.argv[1])
random.seed(11)
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # some end with a reset
    return s
def send(data, wait=0.05):
    try:
        s = conn()
        s.sendall(data)
        time.sleep(wait)
        s.close()
    except OSError as e:
        print("send:", e)
for n in [1, 7, 31, 32, 33, 100, 4096, 65536, 1 << 20]:
    send(os.urandom(n))
# fake BASP headers: a client handshake with a short payload, an unknown operation, a direct message to actor 1
for op, length, data in [(1, 64, 3), (1, 1 << 20, 3), (0x7f, 0, 0), (2, 16, 0), (6, 0, 0)]:
    send(struct.pack(">BBBBIQQQ", op, 0, 0, 0, length, data, 0, 1) + os.urandom(min(length, 4096)))
send(struct.pack(">BBBB", 1, 0, 0, 0))  # a truncated header
socks = [conn() for _ in range(50)]     # a burst of idle connections, then all closed
for s in socks:
    s.close()
print("sent")
EOF
check "the garbage was sent ($(tail -1 "$tmp/garbage.out"))" grep -q '^sent' "$tmp/garbage.out"
sleep 0.5
check "the worker is alive after the garbage" kill -0 "$wpid"

# ---- the right secret: serves ----
TROUPE_SECRET=s3cret start_serve right_secret "$tmp/placed.json" && {
  text=$(complete "$url" "The capital of France is")
  check "with the right secret a completion succeeds ($(cat "$tmp/status") $text)" test "$(cat "$tmp/status")" = 200
  stop_pid "$spid"
}
check "the worker logged the attach" grep -q "worker: attached by" "$tmp/w.log"

# ---- a different model file ----
cp "$model" "$tmp/other.gguf"
printf '\x01' | dd of="$tmp/other.gguf" bs=1 seek=$(($(stat -c %s "$model") - 1)) conv=notrunc status=none
worker_model="$tmp/other.gguf" start_worker other || exit 1
echo "{\"engine\": {\"pp\": 2}, \"placement\": [{\"stage\": 1, \"worker\": \"127.0.0.1:$wport\"}]}" >"$tmp/placed.json"
try_coordinator mismatch "model mismatch"
check "the coordinator logged the mismatch with both digests" grep -q "model mismatch: the worker's file has .* sha256 .*; ours has" "$tmp/mismatch.log"
finish
