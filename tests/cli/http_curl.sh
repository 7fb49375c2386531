#!/usr/bin/env bash
# troupe serve through curl, held to docs/http-contract.md: every endpoint streaming and not, /v1/models/{id}, HEAD
# on the GET routes, per-shard /metrics, the SSE framing byte for byte (tests/http/sse_check.py), every error status
# with its JSON shape and "param", the API key (flag and TROUPE_API_KEY) with /health open, CORS, body and header
# limits, overload (429 + Retry-After), a shard that dies mid-request (503, in-stream error, degraded health, empty
# mailboxes), graceful stop with exit 0.
# Usage: http_curl.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
src=$(realpath "$2")
model=$src/models/SmolLM2-135M-Instruct.Q4_1.gguf
mid=SmolLM2-135M-Instruct.Q4_1
sse_check="python3 $src/tests/http/sse_check.py"
source "$(dirname "${BASH_SOURCE[0]}")/lib/check.sh"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp" || exit 1
t_start=$SECONDS
# Special tokens (ids 0..16) biased away: the generation runs to max_tokens.
no_eog=$(python3 -c 'import json; print(json.dumps({str(i): -100 for i in range(17)}))')

# ---- servers ----
# start NAME ARGS...: troupe serve on a free port; sets $url and $pid, log in NAME.log. A 503 seen on /health before
# the 200 is kept in NAME.loading.
start() {
  local name=$1 line="" code
  shift
  local base=(--host 127.0.0.1 --port 0 --model "$model")
  [ -n "${no_base_flags:-}" ] && base=()  # everything from the environment and the config file
  "$troupe" serve "${base[@]}" "$@" >"$name.out" 2>"$name.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do
    line=$(grep -o -m1 'listening on http://[^ ]*' "$name.log" 2>/dev/null)
    [ -n "$line" ] || ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.1
  done
  url=${line#listening on }
  url=${url%$'\r'}
  if [ -z "$line" ]; then
    echo "FAIL: server $name did not log 'listening on http://HOST:PORT': $(tail -5 "$name.log")"
    failures=$((failures + 1))
    return 1
  fi
  for _ in $(seq 600); do
    code=$(curl -s -o "$name.health" -w '%{http_code}' "$url/health")
    [ "$code" = 200 ] && return 0
    if [ "$code" = 503 ] && [ ! -f "$name.loading" ]; then
      cp "$name.health" "$name.loading"
      curl -s -o "$name.loading_post" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary '{"prompt": "hi", "max_tokens": 1}' "$url/v1/completions" >"$name.loading_code"
    fi
    sleep 0.05
  done
  echo "FAIL: server $name never answered /health 200"
  failures=$((failures + 1))
  return 1
}
# stop: SIGTERM the last started server; its exit code must be 0 within 30 s
stop() {
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    check "the server did not stop within 30 s of SIGTERM" false
  fi
  wait "$pid"
  local rc=$?
  check "SIGTERM: exit code $rc, expected 0" test $rc -eq 0
}

# ---- requests ----
# req METHOD PATH [CURL ARGS...]: sets $code; body in body.json, headers in head.txt
req() {
  local method=$1 path=$2
  shift 2
  code=$(curl -s -X "$method" -o body.json -D head.txt -w '%{http_code}' "$@" "$url$path")
}
post() { local path=$1 body=$2; shift 2; req POST "$path" -H 'Content-Type: application/json' --data-binary "$body" "$@"; }
# sse PATH BODY FILE [CURL ARGS...]: a streaming POST, raw body in FILE, summary in FILE.sum
sse() {
  local path=$1 body=$2 file=$3
  shift 3
  code=$(curl -sN -o "$file" -D "$file.head" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "$body" "$@" "$url$path")
  $sse_check "$file" >"$file.sum"
}
# head_raw PATH [HEADER...]: HEAD PATH on a raw keep-alive connection, then GET /health on it (Connection: close).
# Sets $code (the HEAD's status); head.txt has the HEAD's headers, and after.txt what came after them: the GET's
# response when the HEAD had no body.
head_raw() {
  python3 -c '
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
extra = "".join(h + "\r\n" for h in sys.argv[3:])
s = socket.create_connection((u.hostname, u.port), timeout=30)
s.sendall(("HEAD %s HTTP/1.1\r\nHost: t\r\n%s\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
           % (sys.argv[2], extra)).encode())
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
head, _, after = out.partition(b"\r\n\r\n")
open("head.txt", "wb").write(head + b"\r\n")
open("after.txt", "wb").write(after)
print(head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "none")' "$url" "$@" >head_code.txt
  code=$(cat head_code.txt)
}
j() { jq -e "$@" body.json >/dev/null 2>&1; }        # j FILTER: the last body satisfies it
jv() { jq -r "$1" "${2:-body.json}" 2>/dev/null; }   # jv FILTER [FILE]: a value, for messages
s() { jq -e "${@:1:$#-1}" "${!#}.sum" >/dev/null 2>&1; }  # s [JQ ARGS] FILTER FILE: FILE's stream summary satisfies it
header() { grep -i "^$1:" "${2:-head.txt}" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
# is_error STATUS [TYPE] [PARAM]: the last response is the contract's error: status, {"error": {message, type,
# param, code}}, the type and param when given
is_error() {
  [ "$code" = "$1" ] || { echo "  status $code, expected $1: $(head -c 300 body.json)"; return 1; }
  jq -e --arg t "${2:-}" --arg p "${3:-}" '.error | type == "object" and (.message | type == "string" and length > 0)
      and has("type") and has("param") and has("code") and ($t == "" or .type == $t) and ($p == "" or .param == $p)' \
    body.json >/dev/null 2>&1 || { echo "  body: $(head -c 300 body.json)"; return 1; }
}
chat() {  # chat JSON-FIELDS: a chat body with one user message plus the given fields
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France? Answer in one sentence.\"}]${1:+, $1}}"
}

# ==== server a: defaults ====
start a || { echo "$passes passed, $failures failed"; exit 1; }
if [ -f a.loading ]; then
  code=503 && cp a.loading body.json
  check "/health while loading is not 503 {\"status\":\"loading\"}: $(cat a.loading)" j '.status == "loading"'
  code=$(cat a.loading_code) && cp a.loading_post body.json
  if [ "$code" = 503 ]; then
    check "a completion while loading" is_error 503 service_unavailable
  else
    echo "note: the model finished loading before the completion sent while loading arrived ($code)"
  fi
else
  echo "note: /health was 200 at the first poll; the loading state (503) was not observable"
fi

req GET /health
check "/health: $code $(cat body.json)" j '.status == "ok"'
check "/health status $code" test "$code" = 200
req GET /v1/models
check "/v1/models: $(cat body.json)" j --arg id "$mid" '.object == "list" and (.data | length == 1) and .data[0].id == $id
  and .data[0].object == "model" and .data[0].owned_by == "troupe" and (.data[0].created | type == "number")'
cp body.json models.json
req GET "/v1/models/$mid"
check "/v1/models/$mid: $code $(cat body.json)" j --argjson m "$(jq -c .data[0] models.json)" '. == $m'
req GET /v1/models/gpt-4o
check "/v1/models/gpt-4o" eval 'is_error 404 not_found_error && j ".error.code == \"model_not_found\""'
req GET /v1/models/
check "/v1/models/ (no id)" is_error 404 not_found_error

# -- HEAD on every GET route: the GET's status and headers, no body (the next response follows at once) --
for path in /health /v1/models "/v1/models/$mid" /v1/models/gpt-4o /metrics /v1/nothing; do
  req GET "$path"
  get_code=$code get_length=$(stat -c %s body.json) get_type=$(header content-type)
  head_raw "$path"
  check "HEAD $path: status $code (GET $get_code), Content-Length $(header content-length) (GET body $get_length)" \
    eval '[ "$code" = "$get_code" ] && [ "$(header content-type)" = "$get_type" ] &&
      { [ "$path" = /metrics ] || [ "$(header content-length)" = "$get_length" ]; }'
  check "HEAD $path: a body was sent, or the connection broke: $(head -c 120 after.txt)" \
    eval 'head -1 after.txt | grep -q "^HTTP/1.1 200 " && tail -c 15 after.txt | grep -qx "{\"status\":\"ok\"}"'
done
head_raw /v1/chat/completions
check "HEAD on a POST route: $code, Allow $(header allow)" \
  eval '[ "$code" = 405 ] && [ "$(header allow)" = "POST, OPTIONS" ] && head -1 after.txt | grep -q "^HTTP/1.1 200 "'

# -- chat, not streamed: the shape; the reference text for the streamed run below --
greedy='"model": "'$mid'", "max_tokens": 12, "temperature": 0'
post /v1/chat/completions "$(chat "$greedy")"
cp body.json chat1.json
check "chat: status $code: $(head -c 300 body.json)" test "$code" = 200
check "chat: response shape: $(cat body.json)" j --arg id "$mid" '(.id | startswith("chatcmpl-")) and
  .object == "chat.completion" and (.created | type == "number") and .model == $id and (.choices | length == 1) and
  .choices[0].index == 0 and .choices[0].message.role == "assistant" and (.choices[0].message.content | length > 0)
  and (.choices[0].finish_reason == "stop" or .choices[0].finish_reason == "length") and (.choices[0] | has("logprobs"))
  and .usage.prompt_tokens > 0 and .usage.completion_tokens > 0 and .usage.completion_tokens <= 12
  and .usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens'
check "chat: content type $(header content-type)" grep -qi '^content-type: application/json' head.txt
check "chat: 'Paris' not in a greedy answer: $(jv .choices[0].message.content)" j '.choices[0].message.content | test("Paris")'
# content as an array of text parts, and no "model" field: the same answer
post /v1/chat/completions '{"messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
  {"type": "text", "text": " of France? Answer in one sentence."}]}], "max_tokens": 12, "temperature": 0}'
check "chat: text parts without a model field: $code $(head -c 300 body.json)" \
  eval '[ "$code" = 200 ] && [ "$(jv .choices[0].message.content)" = "$(jv .choices[0].message.content chat1.json)" ]'

# every sampling field at once, in range; max_completion_tokens; n 2 greedy gives the same text twice
post /v1/chat/completions "$(chat '"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 0.5,
  "frequency_penalty": 0.5, "repetition_penalty": 1.1, "seed": 1, "stop": ["\n\n", "zz"], "n": 2, "logprobs": true,
  "top_logprobs": 2, "logit_bias": {"5": -100}, "user": "u-1", "max_tokens": 6')"
check "chat with every sampling field in range: $code $(head -c 300 body.json)" j '(.choices | length == 2) and
  ([.choices[].index] | sort == [0, 1]) and (.choices[0].logprobs.content | length > 0) and
  (.choices[0].logprobs.content[0].top_logprobs | length == 2) and .usage.completion_tokens <= 12'
post /v1/chat/completions "$(chat "\"max_completion_tokens\": 3, \"logit_bias\": $no_eog")"
check "max_completion_tokens 3: $(jv .usage)" j '.usage.completion_tokens == 3 and .choices[0].finish_reason == "length"'
sse /v1/chat/completions "$(chat "$greedy, \"n\": 2, \"stream\": true")" n2.sse
check "chat n 2 streamed: $(head -c 400 n2.sse.sum)" s --arg t "$(jv .choices[0].message.content chat1.json)" \
  '.problem == null and .done_last and .texts == {"0": $t, "1": $t} and (.finish | length == 2)' n2.sse

# -- chat streamed, with usage --
sse /v1/chat/completions "$(chat "$greedy, \"stream\": true, \"stream_options\": {\"include_usage\": true}")" c1.sse
check "chat stream: status $code" test "$code" = 200
check "chat stream: content type $(header content-type c1.sse.head)" \
  grep -qi '^content-type: text/event-stream' c1.sse.head
check "chat stream: framing: $(jv .problem c1.sse.sum)" s '.problem == null' c1.sse
check "chat stream: [DONE] is not the last event: $(tail -c 200 c1.sse)" s '.done_last' c1.sse
check "chat stream: first delta $(jv .first_delta c1.sse.sum), expected role assistant" \
  s '.first_delta.role == "assistant"' c1.sse
check "chat stream: objects/ids $(jv '[.objects, .ids]' c1.sse.sum)" \
  s '.objects == ["chat.completion.chunk"] and (.ids | length == 1) and (.ids[0] | startswith("chatcmpl-"))' c1.sse
check "chat stream: finish_reason not on the last chunk only: $(jv '[.finish, .finish_early]' c1.sse.sum)" \
  s --argjson f "$(jq .choices[0].finish_reason chat1.json)" '.finish["0"] == $f and .finish_early == []' c1.sse
check "chat stream: text differs from the non-streamed answer: $(jv .texts c1.sse.sum)" \
  s --arg t "$(jv .choices[0].message.content chat1.json)" '.texts["0"] == $t' c1.sse
check "chat stream: usage chunk $(jv '[.usage, .usage_chunks, .usage_last]' c1.sse.sum)" \
  s --argjson u "$(jq -c .usage chat1.json)" '.usage == $u and .usage_chunks == 1 and .usage_last' c1.sse
check "chat stream: chunks before the usage chunk carry a usage" s '.non_null_usage == 0' c1.sse
sse /v1/chat/completions "$(chat "$greedy, \"stream\": true")" c2.sse
check "chat stream without include_usage: $(jv . c2.sse.sum)" \
  s '.problem == null and .done_last and .usage_chunks == 0 and .non_null_usage == 0' c2.sse

# -- completions: string, array of strings, token ids, arrays of ids; n; streamed --
comp() { echo "{\"model\": \"$mid\", \"prompt\": $1, \"max_tokens\": 10, \"temperature\": 0, \"logit_bias\": $no_eog${2:+, $2}}"; }
post /v1/completions "$(comp '"Once upon a time"')"
cp body.json p1.json
check "completions: shape: $(head -c 400 body.json)" j --arg id "$mid" '(.id | startswith("cmpl-")) and
  .object == "text_completion" and .model == $id and (.created | type == "number") and (.choices | length == 1) and
  .choices[0].index == 0 and (.choices[0].text | length > 0) and .choices[0].finish_reason == "length" and
  (.choices[0] | has("logprobs")) and .usage.completion_tokens == 10 and
  .usage.total_tokens == .usage.prompt_tokens + 10'
post /v1/completions "$(comp '"Once upon a time"' '"logprobs": 2')"
check "completions logprobs 2, the legacy shape: $(jq -c .choices[0].logprobs body.json | head -c 300)" \
  j '.choices[0].logprobs | (.tokens | length == 10) and (.token_logprobs | length == 10) and
  (.top_logprobs | length == 10) and (.top_logprobs | all(length == 2)) and (.text_offset | length == 10) and
  (.token_logprobs | all(. <= 0))'
check "completions logprobs changed the greedy text" j --arg a "$(jv .choices[0].text p1.json)" '.choices[0].text == $a'
post /v1/completions "$(comp '"1, 2, 3, 4,"')"
cp body.json p2.json
check "completions: counting prompt: $code $(head -c 300 body.json)" j '.choices[0].text | test("5")'
post /v1/completions "$(comp '["Once upon a time", "1, 2, 3, 4,"]')"
check "completions: array of strings: $(head -c 600 body.json)" \
  j --arg a "$(jv .choices[0].text p1.json)" --arg b "$(jv .choices[0].text p2.json)" \
  --argjson u "$(jq '.usage.prompt_tokens' p1.json)" --argjson v "$(jq '.usage.prompt_tokens' p2.json)" \
  '(.choices | length == 2) and ([.choices[] | {(.index | tostring): .text}] | add) == {"0": $a, "1": $b} and
   .usage.prompt_tokens == $u + $v and .usage.completion_tokens == 20'
post /tokenize '{"prompt": "Once upon a time"}'
ids1=$(jq -c .tokens body.json)
post /tokenize '{"prompt": "1, 2, 3, 4,"}'
ids2=$(jq -c .tokens body.json)
post /v1/completions "$(comp "$ids1")"
check "completions: token ids $ids1 gave other text: $(head -c 300 body.json)" \
  j --arg a "$(jv .choices[0].text p1.json)" '.choices[0].text == $a'
post /v1/completions "$(comp "[$ids1, $ids2]" '"n": 2')"
check "completions: arrays of ids with n 2: indexes and texts: $(head -c 800 body.json)" \
  j --arg a "$(jv .choices[0].text p1.json)" --arg b "$(jv .choices[0].text p2.json)" \
  '([.choices[] | {(.index | tostring): .text}] | add) == {"0": $a, "1": $a, "2": $b, "3": $b}'
sse /v1/completions "$(comp '["Once upon a time", "1, 2, 3, 4,"]' '"stream": true, "stream_options": {"include_usage": true}')" p.sse
check "completions stream: $(head -c 600 p.sse.sum)" \
  s --arg a "$(jv .choices[0].text p1.json)" --arg b "$(jv .choices[0].text p2.json)" '.problem == null and .done_last
  and .objects == ["text_completion"] and (.ids[0] | startswith("cmpl-")) and .texts == {"0": $a, "1": $b} and
  .finish == {"0": "length", "1": "length"} and .finish_early == [] and .usage.completion_tokens == 20 and .usage_last' p.sse
check "completions stream: content type $(header content-type p.sse.head)" \
  grep -qi '^content-type: text/event-stream' p.sse.head

# -- /tokenize, /detokenize --
post /tokenize '{"prompt": "Hello world", "add_special_tokens": false}'
check "/tokenize: $(cat body.json)" j '(.tokens | length > 0) and (.tokens | all(type == "number")) and
  .count == (.tokens | length) and .max_model_len == 8192'
hello=$(jq -c .tokens body.json)
post /tokenize '{"content": "Hello world", "add_special_tokens": false}'
check "/tokenize: the \"content\" alias: $(cat body.json)" j --argjson t "$hello" '.tokens == $t'
post /detokenize "{\"tokens\": $hello}"
check "/detokenize: $(cat body.json)" j '.prompt == "Hello world"'
text='naïve café, 世界 🙂 end'
post /tokenize "$(jq -cn --arg t "$text" '{prompt: $t, add_special_tokens: false}')"
post /detokenize "$(jq -c '{tokens: .tokens}' body.json)"
check "/detokenize(/tokenize) round trip of non-ASCII text: $(cat body.json)" j --arg t "$text" '.prompt == $t'
post /detokenize '{"tokens": [999999]}'
check "/detokenize: an id outside the vocabulary" is_error 400 invalid_request_error tokens

# -- /metrics --
req GET /metrics
check "/metrics: status $code, type $(header content-type)" \
  grep -qi '^content-type: text/plain; version=0.0.4' head.txt
missing=""
for g in troupe_requests_running troupe_requests_waiting troupe_kv_blocks_used troupe_kv_blocks_total; do
  grep -q "^# TYPE $g gauge" body.json && grep -q "^$g " body.json || missing+=" $g"
done
for c in troupe_prompt_tokens_total troupe_generation_tokens_total troupe_shard_restarts_total troupe_messages_total; do
  grep -q "^# TYPE $c counter" body.json && grep -q "^$c " body.json || missing+=" $c"
done
grep -q '^troupe_requests_total{status="' body.json || missing+=" troupe_requests_total{status=...}"
for h in troupe_time_to_first_token_seconds troupe_inter_token_latency_seconds troupe_e2e_request_latency_seconds \
  troupe_queue_time_seconds; do
  grep -q "^# TYPE $h histogram" body.json && grep -q "^${h}_bucket{le=\"+Inf\"} " body.json &&
    grep -q "^${h}_sum " body.json && grep -q "^${h}_count " body.json || missing+=" $h"
done
check "/metrics lacks:$missing" test -z "$missing"
metric() { awk -v k="$1" '$1 == k { print $2 }' body.json; }
check "/metrics: generation tokens $(metric troupe_generation_tokens_total) < the 100+ generated so far" \
  awk "BEGIN { exit !($(metric troupe_generation_tokens_total) >= 100) }"
check "/metrics: e2e histogram count $(metric troupe_e2e_request_latency_seconds_count) != its +Inf bucket" \
  test "$(metric troupe_e2e_request_latency_seconds_count)" = "$(metric 'troupe_e2e_request_latency_seconds_bucket{le="+Inf"}')"
check "/metrics: idle, yet kv blocks used $(metric troupe_kv_blocks_used) of $(metric troupe_kv_blocks_total)" \
  test "$(metric troupe_kv_blocks_used)" = 0 -a "$(metric troupe_kv_blocks_total)" != 0
# per shard (one replica, one stage here): a mailbox depth gauge and a step time histogram labelled replica, stage,
# group; every step went through every shard; idle, no message waits
shard_labels() { grep -oE "^$1\{replica=\"[0-9]+\",stage=\"[0-9]+\",group=\"[0-9]+\"" body.json | sed 's/^[^{]*//' | sort; }
check "/metrics: per-shard metric types" eval 'grep -q "^# TYPE troupe_shard_mailbox_depth gauge$" body.json &&
  grep -q "^# TYPE troupe_shard_step_seconds histogram$" body.json'
check "/metrics: no shard series, or labels that differ: $(shard_labels troupe_shard_mailbox_depth | tr '\n' ' ')" \
  eval '[ -n "$(shard_labels troupe_shard_mailbox_depth)" ] &&
    [ "$(shard_labels troupe_shard_mailbox_depth)" = "$(shard_labels troupe_shard_step_seconds_count)" ] &&
    [ "$(shard_labels troupe_shard_mailbox_depth)" = "$(shard_labels troupe_shard_step_seconds_sum)" ]'
check "/metrics: idle, yet a shard's mailbox is not empty: $(grep '^troupe_shard_mailbox_depth{' body.json | tr '\n' ' ')" \
  eval '! grep "^troupe_shard_mailbox_depth{" body.json | grep -qv " 0$"'
steps=$(metric troupe_steps_total)
bad_shards=$(awk -v n="$steps" '/^troupe_shard_step_seconds_count\{/ && $2 != n { print }
  /^troupe_shard_step_seconds_sum\{/ && !($2 > 0) { print }' body.json)
check "/metrics: a shard's step count is not troupe_steps_total $steps, or its time is 0: $bad_shards" \
  test -n "$steps" -a "$steps" != 0 -a -z "$bad_shards"
inf_vs_count=$(awk '/^troupe_shard_step_seconds_bucket\{.*le="\+Inf"\}/ { sub(/,le="\+Inf"/, ""); sub(/_bucket/, "_count"); print }' body.json | sort)
check "/metrics: a shard's +Inf bucket is not its _count" \
  test "$inf_vs_count" = "$(grep '^troupe_shard_step_seconds_count{' body.json | sort)"

# -- 400: malformed JSON and every field out of range, "param" naming the field --
post /v1/chat/completions '{"messages": [{"role": "user", "content": "hi"}'
check "malformed JSON" is_error 400 invalid_request_error
# ... and the edges of every range are accepted
edges=('"temperature": 2' '"temperature": 0' '"top_p": 1' '"top_k": 0' '"min_p": 0' '"min_p": 1'
  '"presence_penalty": -2' '"presence_penalty": 2' '"frequency_penalty": -2' '"frequency_penalty": 2'
  '"repetition_penalty": 10' '"stop": ["a", "b", "c", "d"]' "\"stop\": \"$(printf 'y%.0s' $(seq 256))\"" '"n": 8'
  '"logprobs": true, "top_logprobs": 20' '"logit_bias": {"5": 100, "49151": -100}')
refused=""
for f in "${edges[@]}"; do
  post /v1/chat/completions "$(chat "\"max_tokens\": 1, $f")"
  [ "$code" = 200 ] || refused+=" {$(head -c 60 <<<"$f")...}: $code $(jv .error.message)"
done
post /v1/completions '{"prompt": "hi", "max_tokens": 1, "logprobs": 20}'
[ "$code" = 200 ] || refused+=" {completions logprobs 20}: $code"
check "values at the edges of their ranges were refused:$refused" test -z "$refused"
bad_chat() {  # bad_chat PARAM FIELDS
  post /v1/chat/completions "$(chat "$2")"
  check "chat with $2: expected 400 naming $1" is_error 400 invalid_request_error "$1"
}
bad_chat max_tokens '"max_tokens": "ten"'
bad_chat max_tokens '"max_tokens": -5'
bad_chat max_completion_tokens '"max_completion_tokens": "x"'
bad_chat temperature '"temperature": 2.5'
bad_chat temperature '"temperature": "hot"'
bad_chat top_p '"top_p": 0'
bad_chat top_p '"top_p": 1.5'
bad_chat top_k '"top_k": -1'
bad_chat min_p '"min_p": 1.5'
bad_chat presence_penalty '"presence_penalty": 3'
bad_chat frequency_penalty '"frequency_penalty": -2.5'
bad_chat repetition_penalty '"repetition_penalty": 0'
bad_chat repetition_penalty '"repetition_penalty": 11'
bad_chat stop '"stop": ["a", "b", "c", "d", "e"]'
bad_chat stop "\"stop\": \"$(printf 'x%.0s' $(seq 257))\""
bad_chat stop '"stop": 7'
bad_chat n '"n": 9'
bad_chat n '"n": 0'
bad_chat top_logprobs '"logprobs": true, "top_logprobs": 21'
bad_chat logit_bias '"logit_bias": {"49152": 1}'
bad_chat logit_bias '"logit_bias": {"5": 101}'
bad_chat logit_bias '"logit_bias": {"five": 1}'
bad_chat seed '"seed": "x"'
bad_chat stream '"stream": "yes"'
post /v1/chat/completions '{"max_tokens": 4}'
check "chat without messages" is_error 400 invalid_request_error messages
post /v1/chat/completions '{"messages": "hi"}'
check "chat with messages a string" is_error 400 invalid_request_error messages
post /v1/chat/completions '{"messages": [{"role": "robot", "content": "hi"}]}'
check "chat with role robot: $(jv .error.param)" \
  eval 'is_error 400 invalid_request_error && j ".error.param | startswith(\"messages\")"'
post /v1/completions '{"max_tokens": 4}'
check "completions without prompt" is_error 400 invalid_request_error prompt
post /v1/completions '{"prompt": 5}'
check "completions with prompt 5" is_error 400 invalid_request_error prompt
post /v1/completions '{"prompt": "hi", "echo": true}'
check "completions with echo true" is_error 400 invalid_request_error echo
post /v1/completions '{"prompt": "hi", "logprobs": 21}'
check "completions with logprobs 21" is_error 400 invalid_request_error logprobs
post /v1/completions '{"prompt": "hi", "max_tokens": 9000}'
check "prompt + max_tokens over the 8192 context" is_error 400 invalid_request_error
post /tokenize '{"prompt": 5}'
check "/tokenize with prompt 5" is_error 400 invalid_request_error prompt
post /detokenize '{"tokens": "abc"}'
check "/detokenize with tokens a string" is_error 400 invalid_request_error tokens

# -- 404, 405 --
req GET /v1/nothing
check "unknown route" is_error 404 not_found_error
post /v1/chat/completion "$(chat)"
check "a misspelt route" is_error 404 not_found_error
post /v1/chat/completions "$(chat '"model": "gpt-4o"')"
check "chat naming another model" eval 'is_error 404 not_found_error && j ".error.code == \"model_not_found\""'
post /v1/completions '{"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}'
check "completions naming another model" eval 'is_error 404 not_found_error && j ".error.code == \"model_not_found\""'
check "the 404 for a model names the host path of the model file" eval '! grep -qF "$src" body.json'
wrong_method() {  # METHOD PATH ALLOWED
  req "$1" "$2"
  check "$1 $2: expected 405 with Allow: $3" eval "is_error 405 && header allow | grep -q '$3'"
}
wrong_method GET /v1/chat/completions POST
wrong_method GET /v1/completions POST
wrong_method DELETE /v1/models 'GET, HEAD'
wrong_method POST "/v1/models/$mid" 'GET, HEAD'
wrong_method POST /health GET
wrong_method PUT /tokenize POST

# -- 413, 431 at the default limits (1 MiB body, 16 KiB headers) --
python3 -c 'import json; print(json.dumps({"messages": [{"role": "user", "content": "x" * (1 << 20)}]}))' >big.json
req POST /v1/chat/completions -H 'Content-Type: application/json' --data-binary @big.json
check "a body over 1 MiB" is_error 413
req GET /v1/models -H "X-Filler: $(head -c 17000 /dev/zero | tr '\0' a)"
check "a header over 16 KiB" is_error 431
req GET /health -H "X-Filler: $(head -c 8000 /dev/zero | tr '\0' a)"
check "an 8 KB header is within the default limit: $code" test "$code" = 200

# -- CORS off by default; no other request's text in the log --
req GET /v1/models -H 'Origin: http://x.example'
check "CORS header without --cors-origin" eval '! grep -qi "^access-control-allow-origin" head.txt'
post /v1/chat/completions '{"messages": [{"role": "user", "content": "my secret is zebra-4711"}], "max_tokens": 2}'
post /v1/chat/completions '{"messages": [{"role": "user", "content": "zebra-4712"}], "max_tokens": "x"}'
check "a prompt's text reached the log" eval '! grep -q "zebra-47" a.log'
check "a 400 message echoes the request text" eval '! grep -q zebra body.json'
stop

# ==== server b: API key (flag over TROUPE_API_KEY), small context, served name, CORS, max-n ====
key=sekrit-key-42
TROUPE_API_KEY=env-key start b --api-key "$key" --ctx-size 128 --served-model-name tiny --max-n 2 \
  --cors-origin http://good.example --cors-origin http://also.example || { echo "$passes passed, $failures failed"; exit 1; }
auth=(-H "Authorization: Bearer $key")
for route in "POST /v1/chat/completions" "POST /v1/completions" "GET /v1/models" "GET /v1/models/tiny" "GET /metrics" \
  "POST /tokenize" "POST /detokenize"; do
  req ${route% *} ${route#* } -H 'Content-Type: application/json' --data-binary '{}'
  check "$route without a key" is_error 401 authentication_error
done
req GET /v1/models -H "Authorization: Bearer wrong"
check "a wrong key" is_error 401 authentication_error
check "the 401 shows the key" eval '! grep -q "$key" body.json'
req GET /v1/models -H "Authorization: $key"
check "the key without Bearer" is_error 401 authentication_error
req GET /v1/models -H "Authorization: Bearer env-key"
check "TROUPE_API_KEY won over --api-key" is_error 401 authentication_error
req GET /health
check "/health needs the key: $code" test "$code" = 200
req GET /v1/models "${auth[@]}"
check "served name: $(cat body.json)" j '.data[0].id == "tiny"'
req GET /v1/models/tiny "${auth[@]}"
check "/v1/models/tiny under --served-model-name: $code $(cat body.json)" j '.id == "tiny" and .object == "model"'
req GET "/v1/models/$mid" "${auth[@]}"
check "/v1/models/<the file's name> under --served-model-name" is_error 404 not_found_error
req GET /v1/models/tiny
check "/v1/models/tiny without the key" is_error 401 authentication_error
head_raw /v1/models/tiny
check "HEAD /v1/models/tiny without the key: $code, no body" \
  eval '[ "$code" = 401 ] && head -1 after.txt | grep -q "^HTTP/1.1 200 "'
post /v1/chat/completions "$(chat '"model": "tiny", "max_tokens": 3')" "${auth[@]}"
check "chat with the right key and served name: $code $(head -c 300 body.json)" j '.model == "tiny"'
post /v1/chat/completions "$(chat "\"model\": \"$mid\", \"max_tokens\": 3")" "${auth[@]}"
check "the file's own name is another model under --served-model-name" is_error 404 not_found_error
post /tokenize '{"prompt": "hi"}' "${auth[@]}"
check "/tokenize max_model_len under --ctx-size 128: $(cat body.json)" j '.max_model_len == 128'
post /v1/completions '{"prompt": "Once upon a time", "max_tokens": 200}' "${auth[@]}"
check "prompt + max_tokens over a 128 context" is_error 400 invalid_request_error
post /v1/completions "{\"prompt\": \"Once upon a time\", \"temperature\": 0, \"logit_bias\": $no_eog}" "${auth[@]}"
check "no max_tokens: the rest of the context: $(jv .usage)" \
  j '.usage.total_tokens == 128 and .choices[0].finish_reason == "length"'
post /v1/chat/completions "$(chat '"n": 3')" "${auth[@]}"
check "n 3 over --max-n 2" is_error 400 invalid_request_error n
req GET /v1/models "${auth[@]}" -H 'Origin: http://good.example'
check "CORS for a listed origin: $(header access-control-allow-origin)" \
  test "$(header access-control-allow-origin)" = http://good.example
req GET /v1/models "${auth[@]}" -H 'Origin: http://also.example'
check "CORS for the second listed origin: $(header access-control-allow-origin)" \
  test "$(header access-control-allow-origin)" = http://also.example
req GET /v1/models "${auth[@]}" -H 'Origin: http://evil.example'
check "CORS for an unlisted origin" eval '! grep -qi "^access-control-allow-origin" head.txt'
req OPTIONS /v1/chat/completions -H 'Origin: http://good.example' -H 'Access-Control-Request-Method: POST' \
  -H 'Access-Control-Request-Headers: authorization, content-type'
check "CORS preflight: $code, $(header access-control-allow-origin), $(header access-control-allow-methods)" \
  eval '[[ $code == 20? ]] && [ "$(header access-control-allow-origin)" = http://good.example ] &&
    header access-control-allow-methods | grep -q POST && header access-control-allow-headers | grep -qi authorization'
check "the API key is in the log" eval '! grep -q "$key" b.log'
stop

# ==== server c: key from TROUPE_API_KEY, one running + one waiting (429), small body and header limits ====
TROUPE_API_KEY=env-key start c --max-running 1 --max-waiting 1 --max-body-bytes 4096 --max-header-bytes 2048 ||
  { echo "$passes passed, $failures failed"; exit 1; }
auth=(-H "Authorization: Bearer env-key")
req GET /v1/models
check "TROUPE_API_KEY: no key" is_error 401 authentication_error
req GET /v1/models "${auth[@]}"
check "TROUPE_API_KEY: the key: $code" test "$code" = 200
post /v1/completions "$(python3 -c 'import json; print(json.dumps({"prompt": "x" * 4100}))')" "${auth[@]}"
check "a body over --max-body-bytes 4096" is_error 413
post /tokenize "$(python3 -c 'import json; print(json.dumps({"prompt": "x" * 3900}))')" "${auth[@]}"
check "a body under --max-body-bytes 4096: $code" test "$code" = 200
req GET /v1/models "${auth[@]}" -H "X-Filler: $(head -c 2100 /dev/zero | tr '\0' a)"
check "headers over --max-header-bytes 2048" is_error 431
# one long request running, one waiting: the third is refused with 429 and Retry-After
long="{\"prompt\": \"Count:\", \"max_tokens\": 4000, \"stream\": true, \"logit_bias\": $no_eog}"
curl -sN -o long1.sse "${auth[@]}" -H 'Content-Type: application/json' --data-binary "$long" "$url/v1/completions" &
c1=$!
for _ in $(seq 300); do grep -q '^data: ' long1.sse 2>/dev/null && break; sleep 0.05; done
curl -sN -o long2.sse "${auth[@]}" -H 'Content-Type: application/json' --data-binary "$long" "$url/v1/completions" &
c2=$!
for _ in $(seq 300); do
  req GET /metrics "${auth[@]}"
  grep -q '^troupe_requests_waiting 1$' body.json && break
  sleep 0.05
done
check "the second long request is not waiting: $(grep -E '^troupe_requests_(running|waiting)' body.json | tr '\n' ' ')" \
  grep -q '^troupe_requests_waiting 1$' body.json
for _ in $(seq 100); do grep -q '^: ping$' long2.sse 2>/dev/null && break; sleep 0.05; done
check "a waiting stream got no ': ping' within 5 s: $(head -c 200 long2.sse)" grep -q '^: ping$' long2.sse
post /v1/completions '{"prompt": "hi", "max_tokens": 2}' "${auth[@]}"
check "a third request past --max-waiting 1" is_error 429 rate_limit_error
check "429 without a Retry-After in seconds: '$(header retry-after)'" eval '[[ "$(header retry-after)" =~ ^[0-9]+$ ]]'
sse /v1/completions '{"prompt": "hi", "max_tokens": 2, "stream": true}' over.sse "${auth[@]}"
cp over.sse body.json
check "a streamed request past --max-waiting gets 429 before any event: $(head -c 200 over.sse)" is_error 429 rate_limit_error
# the clients go away: both requests are cancelled and their KV blocks freed
kill "$c1" "$c2" 2>/dev/null
wait "$c1" "$c2" 2>/dev/null
for _ in $(seq 100); do
  req GET /metrics "${auth[@]}"
  grep -q '^troupe_kv_blocks_used 0$' body.json && grep -q '^troupe_requests_running 0$' body.json &&
    grep -q '^troupe_requests_waiting 0$' body.json && break
  sleep 0.1
done
check "10 s after the clients left, still: $(grep -E '^troupe_(requests_running|requests_waiting|kv_blocks_used) ' body.json | tr '\n' ' ')" \
  eval 'grep -q "^troupe_kv_blocks_used 0$" body.json && grep -q "^troupe_requests_running 0$" body.json'
post /v1/completions '{"prompt": "hi", "max_tokens": 2}' "${auth[@]}"
check "a request after the overload: $code $(head -c 200 body.json)" test "$code" = 200
stop

# ==== servers f, g: a shard dies mid-request (TROUPE_FAULT) ====
TROUPE_FAULT=0:0:0:4 start f || { echo "$passes passed, $failures failed"; exit 1; }
post /v1/completions "{\"prompt\": \"Count:\", \"max_tokens\": 30, \"logit_bias\": $no_eog}"
check "a shard fault under a request" is_error 503 service_unavailable
req GET /health
check "/health after a shard restart: $code $(cat body.json)" eval '[ $code = 200 ] && j ".status == \"degraded\" and (.detail | type == \"string\" and length > 0)"'
post /v1/completions '{"prompt": "Once upon a time", "max_tokens": 4}'
check "the request after the fault: $code" test "$code" = 200
req GET /metrics
check "troupe_shard_restarts_total after the fault: $(grep '^troupe_shard_restarts_total' body.json)" \
  grep -q '^troupe_shard_restarts_total [1-9]' body.json
check "after the fault, idle, a shard's mailbox is not empty: $(grep '^troupe_shard_mailbox_depth{' body.json | tr '\n' ' ')" \
  eval 'grep -q "^troupe_shard_mailbox_depth{" body.json && ! grep "^troupe_shard_mailbox_depth{" body.json | grep -qv " 0$"'
stop
TROUPE_FAULT=0:0:0:6 start g || { echo "$passes passed, $failures failed"; exit 1; }
sse /v1/completions "{\"prompt\": \"Count:\", \"max_tokens\": 30, \"stream\": true, \"logit_bias\": $no_eog}" fault.sse
check "a fault after the headers: an error event, then close, no [DONE]: $(tail -c 300 fault.sse)" \
  s '.problem == null and (.done_last | not) and (.error | type == "object") and (.error | has("message") and
    has("type") and has("param") and has("code"))' fault.sse
check "the fault's error event names a path" eval '! grep -qF "$src" fault.sse'
stop

# ==== server e: settings from a config file's "server" object under TROUPE_* (no flags) ====
echo '{"server": {"port": 1, "host": "localhost", "api_key": "cfg-key", "served_model_name": "from-config",
  "max_top_logprobs": 5}}' >cfg.json
no_base_flags=1 TROUPE_MODEL=$model TROUPE_HOST=127.0.0.1 TROUPE_PORT=0 start e --config cfg.json ||
  { echo "$passes passed, $failures failed"; exit 1; }
check "TROUPE_HOST and TROUPE_PORT 0 did not win over the config file: $url" eval '[[ $url =~ ^http://127\.0\.0\.1:[0-9]+$ && $url != *:1 ]]'
req GET /v1/models
check "the config file's api_key" is_error 401 authentication_error
req GET /v1/models -H 'Authorization: Bearer cfg-key'
check "the config file's key and served name (model from TROUPE_MODEL): $code $(cat body.json)" j '.data[0].id == "from-config"'
post /v1/chat/completions "$(chat '"max_tokens": 2, "logprobs": true, "top_logprobs": 6')" -H 'Authorization: Bearer cfg-key'
check "top_logprobs 6 over the config file's max_top_logprobs 5" is_error 400 invalid_request_error top_logprobs
post /v1/chat/completions "$(chat '"max_tokens": 2, "logprobs": true, "top_logprobs": 5')" -H 'Authorization: Bearer cfg-key'
check "top_logprobs 5 within the config file's limit: $code" test "$code" = 200
stop

# "No stack traces, host paths, API keys or other requests' text in any error or log line"
check "a log line names a host path: $(grep -hF "$src/" ./*.log | head -2)" eval '! grep -qF "$src/" ./*.log'
check "a log line shows a crash or a stack trace" eval '! grep -qiE "terminate called|segmentation|stack trace|backtrace" ./*.log'

echo "http_curl: $((SECONDS - t_start)) s"
echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
