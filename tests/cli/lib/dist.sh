# Helpers for the distributed tests (tests/cli/dist_*.sh), sourced after `troupe`, `model` and `tmp` are set:
# workers and servers on loopback with free ports, completions, checks. Every process started here is killed (by
# its pid) when the test exits.
source "$(dirname "${BASH_SOURCE[0]}")/check.sh"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# wait_log FILE REGEX [TENTHS]: waits until FILE has a line matching REGEX (default 30 s); prints the match
wait_log() {
  local line=""
  for _ in $(seq "${3:-300}"); do
    line=$(grep -o -m1 -E "$2" "$1" 2>/dev/null) && { echo "$line"; return 0; }
    sleep 0.1
  done
  return 1
}

# start_worker NAME [ARGS...]: troupe worker on a free loopback port ($listen or $port_for_worker say otherwise);
# sets $wpid, $wport
start_worker() {
  local name=$1
  shift
  "$troupe" worker --listen "${listen:-127.0.0.1:${port_for_worker:-0}}" --model "${worker_model:-$model}" "$@" \
    >"$tmp/$name.out" 2>>"$tmp/$name.log" &
  wpid=$!
  pids+=("$wpid")
  local line
  line=$(wait_log "$tmp/$name.log" 'worker listening on [^ ]*:[0-9]+') || {
    echo "worker $name did not start: $(tail -3 "$tmp/$name.log")"
    return 1
  }
  wport=${line##*:}
}

# start_serve NAME CONFIG [ARGS...]: troupe serve on a free port with CONFIG; sets $url, $spid once /health
# answers 200 (or, with wait_health=any, once the engine has started even if no replica can serve)
start_serve() {
  local name=$1 config=$2 line code
  shift 2
  "$troupe" serve --host 127.0.0.1 --port 0 --model "$model" --config "$config" "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
  spid=$!
  pids+=("$spid")
  line=$(wait_log "$tmp/$name.log" 'listening on http://[^ ]*') || {
    echo "server $name did not start: $(tail -3 "$tmp/$name.log")"
    return 1
  }
  url=${line#listening on }
  for _ in $(seq 600); do
    code=$(curl -s -o "$tmp/$name.health" -w '%{http_code}' "$url/health")
    [ "$code" = 200 ] && return 0
    if [ "${wait_health:-}" = any ] && [ "$code" = 503 ] && ! grep -q loading "$tmp/$name.health"; then return 0; fi
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  echo "server $name never answered /health 200: $(tail -3 "$tmp/$name.log")"
  return 1
}

# stop_pid PID: SIGTERM, then the exit code (0 expected) within 20 s
stop_pid() {
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# complete URL PROMPT [MAX_TOKENS]: the greedy completion's text on stdout (a JSON string), status in $tmp/status
complete() {
  curl -s -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "$(jq -n --arg p "$2" --argjson n "${3:-24}" '{prompt: $p, max_tokens: $n, temperature: 0}')" \
    "$1/v1/completions" >"$tmp/status"
  jq -c '.choices[0].text' "$tmp/body" 2>/dev/null
}

# complete_all URL OUT_PREFIX: the test prompts at once (so steps batch several sequences); OUT_PREFIX.N holds each text
prompts=("The capital of France is" "Once upon a time" "def fibonacci(n):" "Water boils at"
         "The three primary colors are" "In 1969, the first person to walk on the moon")
complete_all() {
  local i curls=()
  for i in "${!prompts[@]}"; do
    curl -s -H 'Content-Type: application/json' \
      --data-binary "$(jq -n --arg p "${prompts[$i]}" '{prompt: $p, max_tokens: 24, temperature: 0}')" \
      "$1/v1/completions" >"$2.$i.json" &
    curls+=($!)
  done
  for p in "${curls[@]}"; do wait "$p"; done
  for i in "${!prompts[@]}"; do jq -c '.choices[0].text' "$2.$i.json" >"$2.$i" 2>/dev/null || echo "no text" >"$2.$i"; done
}

# same_texts A_PREFIX B_PREFIX: every prompt's text equal (and not empty)
same_texts() {
  local i ok=0
  for i in "${!prompts[@]}"; do
    if [ ! -s "$1.$i" ] || [ "$(cat "$1.$i")" = null ] || ! cmp -s "$1.$i" "$2.$i"; then
      echo "  prompt '${prompts[$i]}': $(cat "$1.$i" 2>/dev/null) vs $(cat "$2.$i" 2>/dev/null)"
      ok=1
    fi
  done
  return $ok
}

# reference: the texts of one process (a server with no placement) in $tmp/ref.N, checked to be texts
reference() {
  echo '{}' >"$tmp/local.json"
  start_serve local "$tmp/local.json" || return 1
  complete_all "$url" "$tmp/ref"
  stop_pid "$spid"
  check "the reference server answered every prompt" \
    bash -c "for f in $tmp/ref.?; do grep -q '^\"' \$f || exit 1; done"
}

# bad_config JSON EXPECTED_MESSAGE: `troupe bench` with that config exits non-zero saying EXPECTED_MESSAGE
bad_config() {
  echo "$1" >"$tmp/bad.json"
  local out rc
  out=$("$troupe" bench --model "$model" --config "$tmp/bad.json" -p 0 -n 1 -r 1 --no-warmup 2>&1)
  rc=$?
  check "refused: $1 (rc $rc: $(tail -1 <<<"$out"))" bash -c '[ "$1" -ne 0 ] && grep -qF -- "$2" <<<"$3"' _ "$rc" "$2" "$out"
}

# stream URL MAX_TOKENS OUT: a streamed greedy completion (EOS ignored) into OUT, in the background; sets $cpid
stream() {
  curl -s -N -H 'Content-Type: application/json' \
    --data-binary "{\"prompt\": \"Once upon a time\", \"max_tokens\": $2, \"temperature\": 0, \"stream\": true, \"ignore_eos\": true}" \
    "$1/v1/completions" >"$3" &
  cpid=$!
}
# wait_chunks FILE N: until FILE holds N data events (at most 30 s)
wait_chunks() {
  for _ in $(seq 300); do
    local n
    n=$(grep -c '^data: {' "$1" 2>/dev/null)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
# ended_within PID SECONDS: the process ends within SECONDS; prints how long it took (tenths)
ended_within() {
  local t
  for t in $(seq $(($2 * 10))); do
    kill -0 "$1" 2>/dev/null || { echo "$t"; return 0; }
    sleep 0.1
  done
  return 1
}

finish() {
  echo "$passes checks passed, $failures failed ($((SECONDS - t_start)) s)"
  [ "$failures" -eq 0 ]
  exit $?
}
