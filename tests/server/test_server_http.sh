#!/usr/bin/env bash
# test_server_http.sh: integration tests of `gptd serve` through real HTTP (suite 'integration').
#
# Starts the real binary on ephemeral loopback ports with the tiny random model from
# tests/data and checks, with curl and jq: greedy non-streamed == streamed (== `gptd
# generate` when that command exists), every prompt form, n, best_of, echo + logprobs, stop,
# include_usage, seed reproducibility, docs/RELIABILITY.md's bad-input catalogue B/F (status and
# error body, server healthy afterwards), auth and CORS (A), disconnects mid-stream and while
# waiting for a non-streamed answer (running sequences back to 0 within 2 s, seen through
# /metrics), and SIGTERM with streams in flight (all end with [DONE], exit 0).
#
# Usage: test_server_http.sh path/to/gptd
set -u
gptd="$1"
. "$(dirname "$0")/../common.sh"
model=$tiny_model
tmp=$(mktemp -d /tmp/gptd-http-test.XXXXXX)
pids=()
fail=0
n_ok=0

cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    wait 2>/dev/null
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

ok() { n_ok=$((n_ok + 1)); }
bad() { echo "FAIL $*"; fail=1; }

# start NAME ARGS...: starts a server, waits for "ready", sets PORT and PID.
start() {
    local name="$1"
    shift
    "$gptd" serve -m "$model" --host 127.0.0.1 --port 0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    PID=$!
    pids+=("$PID")
    for _ in $(seq 1 100); do
        if grep -q ' ready: ' "$tmp/$name.err"; then
            PORT=$(grep ' ready: ' "$tmp/$name.err" | sed -E 's/.*:([0-9]+)$/\1/')
            return 0
        fi
        sleep 0.05
    done
    echo "server $name did not start:"
    cat "$tmp/$name.err"
    exit 1
}

# req METHOD PATH BODY [curl args...]: sets STATUS; body in $tmp/body, headers in $tmp/hdr.
req() {
    local method="$1" path="$2" body="$3"
    shift 3
    if [ -n "$body" ]; then
        printf '%s' "$body" >"$tmp/req"
        STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -X "$method" \
            -H 'Content-Type: application/json' --data-binary @"$tmp/req" "$@" \
            "http://127.0.0.1:$PORT$path")
    else
        STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -X "$method" "$@" \
            "http://127.0.0.1:$PORT$path")
    fi
}

# expect_error NAME STATUS CODE PARAM: checks the last response's status and error body.
expect_error() {
    local name="$1" status="$2" code="$3" param="$4"
    if [ "$STATUS" != "$status" ]; then
        bad "$name: status $STATUS, want $status: $(head -c 300 "$tmp/body")"
        return
    fi
    if ! grep -qi '^content-type: application/json' "$tmp/hdr"; then
        bad "$name: error without a JSON content type"
        return
    fi
    local got
    got=$(jq -r '[.error.code, (.error.param // "null"), .error.type, (.error.message|type)] | join(" ")' \
        <"$tmp/body" 2>/dev/null)
    case "$got" in
    "$code $param "*" string") ok ;;
    *) bad "$name: error '$got', want code=$code param=$param: $(head -c 300 "$tmp/body")" ;;
    esac
}

# healthy: /health 200 and one normal request 200 (the catalogue's liveness check).
healthy() {
    local s
    s=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")
    [ "$s" = 200 ] || bad "after $1: /health $s"
    req POST /v1/completions '{"prompt":"Hello","max_tokens":4}'
    [ "$STATUS" = 200 ] || bad "after $1: normal request $STATUS"
}

# metric NAME: the value of an unlabelled metric.
metric() {
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'
}

# sse_check FILE: every event is `data: <JSON>` or `data: [DONE]` (last), valid UTF-8.
sse_check() {
    local f="$1"
    iconv -f UTF-8 -t UTF-8 "$f" >/dev/null 2>&1 || { bad "SSE not valid UTF-8"; return 1; }
    local last
    last=$(grep '^data: ' "$f" | tail -n 1)
    [ "$last" = "data: [DONE]" ] || { bad "SSE does not end with [DONE]: $last"; return 1; }
    if grep '^data: ' "$f" | grep -v '^data: \[DONE\]$' | sed 's/^data: //' | jq -e . >/dev/null 2>&1; then
        return 0
    fi
    bad "an SSE data line is not JSON"
    return 1
}

# wait_data FILE...: until every file holds an SSE event (the stream was admitted), up to 20 s.
wait_data() {
    for _ in $(seq 1 400); do
        local all=1
        for f in "$@"; do
            grep -q '^data: ' "$f" 2>/dev/null || all=0
        done
        [ $all = 1 ] && return 0
        sleep 0.05
    done
    bad "streams never started: $*"
}

# A long drain timeout: O08 checks that in-flight streams finish, also in slow (sanitizer) builds.
start main --drain-timeout 300
main_port=$PORT
main_pid=$PID

# ---- basics -------------------------------------------------------------------------------
req GET /health ""
[ "$STATUS" = 200 ] && ok || bad "health $STATUS"
req GET /livez ""
[ "$STATUS" = 200 ] && ok || bad "livez $STATUS"
req GET /v1/models ""
[ "$(jq -r '.data[0].id + " " + (.data[0].max_model_len|tostring)' <"$tmp/body")" = "gpt2-tiny-random 512" ] &&
    ok || bad "models: $(cat "$tmp/body")"
jq -e '.data[0].weights == "f32" and .data[0].kv_cache_dtype == "f32"' <"$tmp/body" >/dev/null &&
    ok || bad "models weights: $(cat "$tmp/body")"

# ---- greedy: non-streamed == streamed (== gptd generate) ------------------------------------
req POST /v1/completions '{"prompt":"Hello, world","max_tokens":12,"temperature":0}'
jq -e '.id|startswith("cmpl-")' <"$tmp/body" >/dev/null && ok || bad "id: $(cat "$tmp/body")"
jq -e '.object == "text_completion" and (.created|type) == "number" and .model == "gpt2-tiny-random"
       and (.system_fingerprint|type) == "string" and .choices[0].index == 0
       and .choices[0].finish_reason == "length" and .usage.completion_tokens == 12
       and .usage.total_tokens == .usage.prompt_tokens + 12' <"$tmp/body" >/dev/null &&
    ok || bad "completion body: $(cat "$tmp/body")"
text_plain=$(jq -r '.choices[0].text' <"$tmp/body")
curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' -D "$tmp/shdr" \
    -d '{"prompt":"Hello, world","max_tokens":12,"temperature":0,"stream":true}' >"$tmp/sse"
grep -qi '^content-type: text/event-stream' "$tmp/shdr" && ok || bad "SSE content type"
grep -qi '^cache-control: no-cache' "$tmp/shdr" && ok || bad "SSE cache-control"
grep -qi '^x-accel-buffering: no' "$tmp/shdr" && ok || bad "SSE x-accel-buffering"
if sse_check "$tmp/sse"; then
    ok
    text_stream=$(grep '^data: {' "$tmp/sse" | sed 's/^data: //' | jq -j '.choices[0].text')
    [ "$text_stream" = "$text_plain" ] && ok || bad "stream text '$text_stream' != '$text_plain'"
    n_ids=$(grep '^data: {' "$tmp/sse" | sed 's/^data: //' | jq -r .id | sort -u | wc -l)
    [ "$n_ids" = 1 ] && ok || bad "chunks carry $n_ids different ids"
    # finish_reason null on every chunk but the last one of the index
    fr=$(grep '^data: {' "$tmp/sse" | sed 's/^data: //' | jq -r '.choices[0].finish_reason' | tr '\n' ' ')
    case "$fr" in
    *"null length ") ok ;;
    *) bad "finish reasons: $fr" ;;
    esac
fi
if "$gptd" help 2>/dev/null | grep -q '^  generate'; then
    gen=$("$gptd" generate -m "$model" -p "Hello, world" -n 12 2>/dev/null)
    [ "$gen" = "$text_plain" ] || [ "$gen" = "Hello, world$text_plain" ] && ok ||
        bad "gptd generate '$gen' != server '$text_plain'"
fi

# ---- prompt forms ---------------------------------------------------------------------------
req POST /tokenize '{"prompt":"Hello, world"}'
ids=$(jq -c .tokens <"$tmp/body")
req POST /detokenize "{\"tokens\":$ids}"
[ "$(jq -r .prompt <"$tmp/body")" = "Hello, world" ] && ok || bad "detokenize: $(cat "$tmp/body")"
req POST /v1/completions "{\"prompt\":$ids,\"max_tokens\":12,\"temperature\":0}"
[ "$(jq -r '.choices[0].text' <"$tmp/body")" = "$text_plain" ] && ok || bad "id prompt differs (F04)"
req POST /v1/completions "{\"prompt\":[\"Hello, world\",\"Hi\"],\"max_tokens\":12,\"temperature\":0}"
[ "$(jq -r '[.choices[].index]|join(",")' <"$tmp/body")" = "0,1" ] && ok || bad "string list: $(cat "$tmp/body")"
[ "$(jq -r '.choices[0].text' <"$tmp/body")" = "$text_plain" ] && ok || bad "batch prompt 0 differs"
req POST /v1/completions "{\"prompt\":[$ids,[15496]],\"max_tokens\":3,\"n\":2}"
[ "$(jq -r '[.choices[].index]|join(",")' <"$tmp/body")" = "0,1,2,3" ] && ok || bad "id lists x n: $(cat "$tmp/body")"

# ---- n, best_of, echo + logprobs, stop, usage, seed ----------------------------------------
req POST /v1/completions '{"prompt":"Hello","max_tokens":4,"n":3}'
[ "$(jq '.choices|length' <"$tmp/body")" = 3 ] && ok || bad "n=3: $(cat "$tmp/body")"
req POST /v1/completions '{"prompt":"Hello","max_tokens":4,"n":1,"best_of":3}'
[ "$STATUS $(jq '.choices|length' <"$tmp/body")" = "200 1" ] && ok || bad "best_of: $(cat "$tmp/body")"
req POST /v1/completions '{"prompt":"Hello, world","max_tokens":3,"echo":true,"logprobs":2,"temperature":0}'
jq -e '.choices[0] as $c | ($c.text | startswith("Hello, world"))
       and ($c.logprobs.tokens|length) == .usage.prompt_tokens + 3
       and ($c.logprobs.token_logprobs[0] == null) and ($c.logprobs.token_logprobs[1]|type) == "number"
       and ($c.logprobs.top_logprobs[1]|length) >= 1 and ($c.logprobs.text_offset|length) == ($c.logprobs.tokens|length)' \
    <"$tmp/body" >/dev/null && ok || bad "echo+logprobs: $(head -c 600 "$tmp/body")"
req POST /v1/completions '{"prompt":"Hello, world","max_tokens":0,"echo":true,"logprobs":1}'
jq -e '.choices[0].text == "Hello, world" and .usage.completion_tokens == 0' <"$tmp/body" >/dev/null &&
    ok || bad "echo max_tokens 0: $STATUS $(head -c 400 "$tmp/body")"
# stop: a piece of the greedy text ends the completion before it
stop=$(printf '%s' "$text_plain" | cut -c5-7)
if [ -n "$stop" ]; then
    req POST /v1/completions "$(jq -nc --arg s "$stop" '{prompt:"Hello, world",max_tokens:12,temperature:0,stop:[$s]}')"
    got=$(jq -r '.choices[0].text' <"$tmp/body")
    want="${text_plain%%"$stop"*}"
    [ "$got" = "$want" ] && [ "$(jq -r '.choices[0].finish_reason' <"$tmp/body")" = stop ] &&
        [ "$(jq -r '.choices[0].stop_reason' <"$tmp/body")" = "$stop" ] && ok ||
        bad "stop '$stop': got '$got' want '$want' ($(cat "$tmp/body"))"
fi
curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Hello","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}' >"$tmp/sse"
if sse_check "$tmp/sse"; then
    grep '^data: {' "$tmp/sse" | tail -n 1 | sed 's/^data: //' |
        jq -e '(.choices|length) == 0 and .usage.completion_tokens == 5' >/dev/null && ok ||
        bad "usage chunk: $(tail -n 4 "$tmp/sse")"
fi
req POST /v1/completions '{"prompt":"Hello","max_tokens":8,"temperature":1,"seed":42}'
s1=$(jq -r '.choices[0].text' <"$tmp/body")
req POST /v1/completions '{"prompt":"Hello","max_tokens":8,"temperature":1,"seed":42}'
s2=$(jq -r '.choices[0].text' <"$tmp/body")
req POST /v1/completions '{"prompt":"Hello","max_tokens":8,"temperature":1,"seed":43}'
s3=$(jq -r '.choices[0].text' <"$tmp/body")
[ "$s1" = "$s2" ] && ok || bad "seed 42 twice: '$s1' vs '$s2'"
[ "$s1" != "$s3" ] && ok || bad "seeds 42 and 43 gave the same text"
req POST /v1/completions '{"prompt":"Hello"}'
[ "$(jq '.usage.completion_tokens <= 16' <"$tmp/body")" = true ] && ok || bad "default max_tokens (F10)"

# ---- catalogue B/F through HTTP --------------------------------------------------------------
while IFS='|' read -r name body status code param; do
    [ -z "$name" ] && continue
    req POST /v1/completions "$body"
    expect_error "$name" "$status" "$code" "$param"
done <<'EOF'
B01 truncated|{"prompt": "hi",|400|invalid_json|null
B03 array|[1,2]|400|invalid_body|null
B03 number|42|400|invalid_body|null
B04 garbage|{"prompt":"hi","max_tokens":2} xyz|400|invalid_json|null
B14 surrogate|{"prompt":"hi \ud800 there"}|400|invalid_json|null
B15 escaped NUL|{"prompt":"hi \u0000 there"}|400|nul_in_string|null
B16 duplicate|{"prompt":"hi","max_tokens":1,"max_tokens":3}|400|duplicate_key|max_tokens
B17 key case|{"Prompt":"hi"}|400|missing_parameter|prompt
F01 no prompt|{"max_tokens":3}|400|missing_parameter|prompt
F02 number|{"prompt":42}|400|invalid_type|prompt
F02 empty inner|{"prompt":[[]]}|400|invalid_type|prompt
F03 empty|{"prompt":""}|400|empty_prompt|prompt
F05 vocab|{"prompt":[50257]}|400|invalid_token_id|prompt
F05 negative|{"prompt":[-1]}|400|invalid_token_id|prompt
F09 zero|{"prompt":"hi","max_tokens":0}|400|invalid_value|max_tokens
F09 float|{"prompt":"hi","max_tokens":1.5}|400|invalid_type|max_tokens
F09 huge|{"prompt":"hi","max_tokens":1e20}|400|invalid_value|max_tokens
F11 temperature|{"prompt":"hi","temperature":-1}|400|invalid_value|temperature
F11 inf|{"prompt":"hi","temperature":1e400}|400|invalid_value|temperature
F13 top_p|{"prompt":"hi","top_p":0}|400|invalid_value|top_p
F14 n|{"prompt":"hi","n":0}|400|invalid_value|n
F14 best_of|{"prompt":"hi","n":3,"best_of":2}|400|invalid_value|best_of
F15 stops|{"prompt":"hi","stop":[""]}|400|invalid_value|stop
F17 stream|{"prompt":"hi","stream":"yes"}|400|invalid_type|stream
F18 logprobs|{"prompt":"hi","logprobs":21}|400|invalid_value|logprobs
F19 seed|{"prompt":"hi","seed":-5}|400|invalid_value|seed
F20 penalty|{"prompt":"hi","frequency_penalty":2.5}|400|invalid_value|frequency_penalty
F21 logit_bias|{"prompt":"hi","logit_bias":{"abc":5}}|400|invalid_value|logit_bias
F22 suffix|{"prompt":"hi","suffix":"x"}|400|unsupported_parameter|suffix
F26 stream_options|{"prompt":"hi","stream_options":{"include_usage":true}}|400|invalid_value|stream_options
EOF
healthy "catalogue B/F table"

req POST /v1/completions ""
expect_error "B02 empty body" 400 invalid_json null
printf '{"prompt":"hi \xff\xfe there"}' >"$tmp/b13"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --data-binary @"$tmp/b13" "http://127.0.0.1:$PORT/v1/completions")
expect_error "B13 invalid UTF-8" 400 invalid_utf8 null
iconv -f UTF-8 -t UTF-8 "$tmp/body" >/dev/null 2>&1 && ok || bad "B13 body not UTF-8"
printf '{"prompt":"hi"}\0garbage' >"$tmp/b04"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --data-binary @"$tmp/b04" "http://127.0.0.1:$PORT/v1/completions")
expect_error "B04 NUL + garbage" 400 invalid_json null
{ printf '{"prompt":"hi","x":'; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; printf '}'; } >"$tmp/b05"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --data-binary @"$tmp/b05" "http://127.0.0.1:$PORT/v1/completions")
expect_error "B05 deep nesting" 400 invalid_json null
{ printf '{"prompt":"'; head -c 2097152 /dev/zero | tr '\0' 'a'; printf '"}'; } >"$tmp/b06"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --data-binary @"$tmp/b06" "http://127.0.0.1:$PORT/v1/completions")
expect_error "B06 2 MiB body" 413 body_too_large null
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
    --data-binary @"$tmp/b06" "http://127.0.0.1:$PORT/v1/completions")
[ "$STATUS" = 413 ] || [ "$STATUS" = 000 ] && ok || bad "B08 2 MiB chunked: $STATUS"
STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
    -d '{"prompt":"Hello, world","max_tokens":12,"temperature":0}' "http://127.0.0.1:$PORT/v1/completions")
[ "$STATUS" = 200 ] && [ "$(jq -r '.choices[0].text' <"$tmp/body")" = "$text_plain" ] && ok ||
    bad "B08 chunked body: $STATUS"
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: text/plain' \
    -d '{"prompt":"Hi","max_tokens":2}' "http://127.0.0.1:$PORT/v1/completions")
[ "$STATUS" = 200 ] && ok || bad "B09 text/plain: $STATUS"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -F 'prompt=hi' "http://127.0.0.1:$PORT/v1/completions")
expect_error "B09 multipart" 415 unsupported_media_type null
for m in PUT GET; do
    req "$m" /v1/completions ""
    expect_error "B10 $m" 405 method_not_allowed null
    grep -qi '^allow: POST, OPTIONS' "$tmp/hdr" && ok || bad "B10 $m: no Allow header"
done
req GET /v1/nope ""
expect_error "B11 unknown route" 404 not_found null
big=$(head -c 65536 /dev/zero | tr '\0' 'x')
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -H "X-Big: $big" "http://127.0.0.1:$PORT/health")
expect_error "B12 64 KiB header" 431 headers_too_large null
{ printf 'X-Big: '; head -c 300000 /dev/zero | tr '\0' 'x'; echo; } >"$tmp/bighdr"
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H @"$tmp/bighdr" "http://127.0.0.1:$PORT/health")
[ "$STATUS" = 431 ] && ok || bad "B12 300 KB header (libmicrohttpd's own 431): $STATUS"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' -H 'Content-Length: 5' -H 'Content-Length: 6' \
    -d '{"a":1}' "http://127.0.0.1:$PORT/v1/completions")
[ "$STATUS" = 400 ] && ok || bad "duplicate Content-Length: $STATUS"
long=$(printf 'Hello %.0s' $(seq 1 600))
req POST /v1/completions "{\"prompt\":\"$long\",\"max_tokens\":4}"
expect_error "F07 prompt over context" 400 context_length_exceeded prompt
grep -q '512' "$tmp/body" && ok || bad "F07 message lacks the context length"
req POST /v1/completions "{\"prompt\":\"$(printf 'Hello %.0s' $(seq 1 400))\",\"max_tokens\":200}"
expect_error "F08 prompt + max_tokens" 400 context_length_exceeded max_tokens
{ printf '{"prompt":"'; head -c 900000 /dev/zero | tr '\0' 'a'; printf '"}'; } >"$tmp/f27"
STATUS=$(curl -s -o "$tmp/body" -D "$tmp/hdr" -w '%{http_code}' --data-binary @"$tmp/f27" "http://127.0.0.1:$PORT/v1/completions")
expect_error "F27 900k characters" 400 context_length_exceeded prompt
req POST /v1/completions '{"prompt":"hi","foo_bar":1,"user":"u1","model":"does-not-exist","max_tokens":2}'
[ "$STATUS" = 200 ] && [ "$(jq -r .model <"$tmp/body")" = gpt2-tiny-random ] && ok || bad "F23/F25: $STATUS"
healthy "catalogue B/F"

# ---- disconnects (O04, O06) -----------------------------------------------------------------
# name: waiting and running requests and used KV blocks all back to 0 within 2 s. The three
# gauges are read one by one, so a step that cancels the last running request and then admits
# a queued one can show running 0 with one still waiting: every one must be 0 in the same poll.
wait_idle() {
    for _ in $(seq 1 40); do
        if [ "$(metric gptd_requests_running)" = 0 ] && [ "$(metric gptd_kv_blocks_used)" = 0 ] &&
            [ "$(metric gptd_requests_waiting)" = 0 ]; then
            ok
            return
        fi
        sleep 0.05
    done
    bad "$1: waiting $(metric gptd_requests_waiting), running $(metric gptd_requests_running), kv used $(metric gptd_kv_blocks_used) after 2 s"
}
cancelled0=$(metric gptd_requests_cancelled_total)
curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Hello","max_tokens":511,"ignore_eos":true,"n":16,"stream":true}' >"$tmp/cut" 2>/dev/null &
cpid=$!
wait_data "$tmp/cut"
kill "$cpid"
wait "$cpid" 2>/dev/null
wait_idle "O04 disconnect mid-stream"
curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Hello","max_tokens":511,"ignore_eos":true,"n":16}' >/dev/null 2>&1 &
cpid=$!
for _ in $(seq 1 400); do
    [ "$(metric gptd_requests_running)" != 0 ] && break
    sleep 0.05
done
kill "$cpid"
wait "$cpid" 2>/dev/null
wait_idle "O06 disconnect while waiting for a non-streamed answer"
cancelled1=$(metric gptd_requests_cancelled_total)
[ "${cancelled1:-0}" -ge $((${cancelled0:-0} + 2)) ] 2>/dev/null && ok || bad "cancelled_total $cancelled0 -> $cancelled1"
healthy "disconnects"

# ---- auth and CORS (A01-A08); this server holds q8 weights and an f16 KV cache ----------------
start auth --api-key sk-test-KEY --cors-origins http://localhost:5173 --weights q8 --kv-cache-dtype f16
auth_pid=$PID
req GET /v1/models "" -H 'Authorization: Bearer sk-test-KEY'
jq -e '.data[0].weights == "q8" and .data[0].kv_cache_dtype == "f16"' <"$tmp/body" >/dev/null &&
    ok || bad "models q8: $(cat "$tmp/body")"
curl -s -H 'Authorization: Bearer sk-test-KEY' "http://127.0.0.1:$PORT/metrics" |
    grep -qx 'gptd_model_info{weights="q8",kv_cache_dtype="f16"} 1' && ok || bad "gptd_model_info q8"
body='{"prompt":"Hi","max_tokens":2}'
req POST /v1/completions "$body"
expect_error "A01 no key" 401 invalid_api_key null
grep -qi '^www-authenticate: Bearer' "$tmp/hdr" && ok || bad "A01 WWW-Authenticate"
for h in 'Bearer wrong' 'Bearer sk-test-KEY2' 'Bearer sk-test-KE' 'Bearer sk-test-kEY'; do
    req POST /v1/completions "$body" -H "Authorization: $h"
    [ "$STATUS" = 401 ] && ok || bad "A02 '$h': $STATUS"
done
for h in 'bearer sk-test-KEY' 'BEARER sk-test-KEY'; do
    req POST /v1/completions "$body" -H "Authorization: $h"
    [ "$STATUS" = 200 ] && ok || bad "A03 '$h': $STATUS"
done
req GET /health ""
[ "$STATUS" = 200 ] && ok || bad "A04 health without key: $STATUS"
req OPTIONS /v1/completions "" -H 'Origin: http://localhost:5173' -H 'Access-Control-Request-Method: POST' \
    -H 'Access-Control-Request-Headers: authorization, content-type'
[ "$STATUS" = 204 ] && ok || bad "A06 preflight: $STATUS"
grep -qi '^access-control-allow-origin: http://localhost:5173' "$tmp/hdr" && ok || bad "A06 ACAO"
grep -qi '^access-control-allow-headers:.*authorization' "$tmp/hdr" && ok || bad "A06 allow-headers"
grep -qi '^vary: origin' "$tmp/hdr" && ok || bad "A06 Vary"
req OPTIONS /v1/completions "" -H 'Origin: https://evil.example' -H 'Access-Control-Request-Method: POST'
grep -qi '^access-control-allow-origin' "$tmp/hdr" && bad "A07 evil origin got ACAO" || ok
req POST /v1/completions "$body" -H 'Authorization: Bearer sk-test-KEY' -H 'Origin: https://evil.example'
grep -qi '^access-control-allow-origin' "$tmp/hdr" && bad "A07 POST evil origin got ACAO" || ok
req POST /v1/completions '{"prompt":""}' -H 'Authorization: Bearer sk-test-KEY' -H 'Origin: http://localhost:5173'
[ "$STATUS" = 400 ] && grep -qi '^access-control-allow-origin: http://localhost:5173' "$tmp/hdr" && ok ||
    bad "A08 error response without ACAO"
req POST /v1/completions '{"prompt":"Hi","max_tokens":2,"stream":true}' -H 'Authorization: Bearer sk-test-KEY' \
    -H 'Origin: http://localhost:5173'
[ "$STATUS" = 200 ] && grep -qi '^access-control-allow-origin: http://localhost:5173' "$tmp/hdr" && ok ||
    bad "A08 stream without ACAO"
req GET /metrics ""
[ "$STATUS" = 401 ] && ok || bad "/metrics without key: $STATUS"
# DNS rebinding: bound to loopback, a foreign Host is refused; localhost names (any port) pass.
req GET /health "" -H 'Host: evil.example'
expect_error "foreign Host" 403 host_not_allowed null
for h in localhost localhost:1234 127.0.0.1 '[::1]:80'; do
    req GET /health "" -H "Host: $h"
    [ "$STATUS" = 200 ] && ok || bad "Host $h: $STATUS"
done
kill -TERM "$auth_pid"
wait "$auth_pid"

# ---- SIGTERM with streams in flight (O08) ---------------------------------------------------
PORT=$main_port
curls=()
for i in 1 2 3; do
    curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":"Hello","max_tokens":511,"ignore_eos":true,"n":8,"stream":true}' >"$tmp/drain$i" 2>/dev/null &
    curls+=($!)
done
wait_data "$tmp/drain1" "$tmp/drain2" "$tmp/drain3"
kill -TERM "$main_pid"
sleep 0.1
STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' "http://127.0.0.1:$PORT/health")
[ "$STATUS" = 503 ] && [ "$(jq -r .error.code <"$tmp/body")" = draining ] && ok || bad "O08 health while draining: $STATUS"
req POST /v1/completions '{"prompt":"Hi","max_tokens":2}'
[ "$STATUS" = 503 ] && ok || bad "O08 new request while draining: $STATUS"
wait "$main_pid"
rc=$?
[ "$rc" = 0 ] && ok || bad "O08 exit code $rc"
wait "${curls[@]}"
for i in 1 2 3; do
    if sse_check "$tmp/drain$i"; then
        grep '^data: {' "$tmp/drain$i" | sed 's/^data: //' | jq -r '.choices[0].finish_reason // empty' |
            grep -q length && ok || bad "O08 stream $i has no finish_reason"
    fi
done
# One access-log line per request, each a JSON object.
jq -e . "$tmp/main.out" >/dev/null 2>&1 && ok || bad "access log is not JSON lines"

# ---- overload (O01): 2 running + 2 queued, the rest 503 queue_full with Retry-After ---------
start overload --max-batch 2 --max-queue 2 --connection-timeout 2
overload_pid=$PID
# B07: a client that announces 1000 bytes, sends 10 and stalls is closed after the idle timeout
# (here 2 s); meanwhile a normal request is served.
t0=$(date +%s%N)
exec 3<>"/dev/tcp/127.0.0.1/$PORT"
printf 'POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"prompt":' >&3
s=$(curl -s -o /dev/null -w '%{http_code}' -d '{"prompt":"Hi","max_tokens":2}' "http://127.0.0.1:$PORT/v1/completions")
[ "$s" = 200 ] && ok || bad "B07: normal request during a stalled upload: $s"
timeout 10 cat <&3 >/dev/null
exec 3<&-
dt=$((($(date +%s%N) - t0) / 1000000))
[ "$dt" -ge 1500 ] && [ "$dt" -lt 8000 ] && ok || bad "B07: stalled connection closed after $dt ms (timeout 2 s)"
curls=()
for i in $(seq 1 8); do
    curl -sN -D "$tmp/ov_hdr$i" "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":"Hello","max_tokens":400,"ignore_eos":true,"stream":true}' >"$tmp/ov$i" 2>/dev/null &
    curls+=($!)
    sleep 0.02
done
wait "${curls[@]}"
n503=$(grep -l '^HTTP/1.1 503' "$tmp"/ov_hdr* | wc -l)
n200=$(grep -l '^HTTP/1.1 200' "$tmp"/ov_hdr* | wc -l)
[ "$n200" -ge 4 ] && [ "$n503" -ge 1 ] && [ $((n200 + n503)) = 8 ] && ok || bad "O01: $n200 admitted, $n503 refused"
for f in $(grep -l '^HTTP/1.1 503' "$tmp"/ov_hdr*); do
    grep -qi '^retry-after:' "$f" && ok || bad "O01: 503 without Retry-After"
    jq -e '.error.code == "queue_full" and .error.type == "overloaded_error"' <"${f/ov_hdr/ov}" >/dev/null &&
        ok || bad "O01 body: $(cat "${f/ov_hdr/ov}")"
done
for f in $(grep -l '^HTTP/1.1 200' "$tmp"/ov_hdr*); do
    sse_check "${f/ov_hdr/ov}" && ok
done
healthy "overload"

kill -TERM "$overload_pid"
wait "$overload_pid"

# ---- O05: clients that leave while queued are dropped from the queue -----------------------
# 2 running slots and 60 long requests ahead keep the two test requests queued (FIFO) for
# seconds; both (one streaming, one not) are cancelled within 2 s of their clients leaving.
start queue --max-batch 2 --max-queue 64
queue_pid=$PID
busy=()
for i in $(seq 1 60); do
    curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":"Hello","max_tokens":511,"ignore_eos":true,"stream":true}' >/dev/null 2>&1 &
    busy+=($!)
done
for _ in $(seq 1 200); do
    [ "$(metric gptd_requests_waiting)" -ge 30 ] 2>/dev/null && break
    sleep 0.02
done
cancelled0=$(metric gptd_requests_cancelled_total)
curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Hello","max_tokens":8,"stream":true}' >"$tmp/queued1" 2>/dev/null &
q1=$!
curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Hello","max_tokens":8}' >/dev/null 2>&1 &
q2=$!
sleep 0.3
kill "$q1" "$q2"
wait "$q1" "$q2" 2>/dev/null
for _ in $(seq 1 40); do
    [ "$(metric gptd_requests_cancelled_total)" -ge $((cancelled0 + 2)) ] 2>/dev/null && break
    sleep 0.05
done
[ "$(metric gptd_requests_cancelled_total)" -ge $((cancelled0 + 2)) ] 2>/dev/null && ok ||
    bad "O05: queued requests of gone clients not cancelled within 2 s ($cancelled0 -> $(metric gptd_requests_cancelled_total))"
grep -q '^data: {' "$tmp/queued1" && bad "O05: the queued stream produced tokens"
kill "${busy[@]}" 2>/dev/null
wait "${busy[@]}" 2>/dev/null
wait_idle "O05 all clients gone"
kill -TERM "$queue_pid"
wait "$queue_pid"

# ---- SIGTERM past --drain-timeout (O09): error event shutting_down, [DONE], exit 0 --------
start drain --drain-timeout 1
drain_pid=$PID
curls=()
for i in 1 2; do
    curl -sN "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":"Hello","max_tokens":511,"ignore_eos":true,"n":16,"stream":true}' >"$tmp/cut$i" 2>/dev/null &
    curls+=($!)
done
wait_data "$tmp/cut1" "$tmp/cut2"
kill -TERM "$drain_pid"
wait "$drain_pid"
rc=$?
[ "$rc" = 0 ] && ok || bad "O09 exit code $rc"
wait "${curls[@]}"
for i in 1 2; do
    if sse_check "$tmp/cut$i"; then
        grep '^data: {"error"' "$tmp/cut$i" | sed 's/^data: //' | jq -e '.error.code == "shutting_down"' >/dev/null &&
            ok || bad "O09 stream $i: no shutting_down error event: $(tail -n 3 "$tmp/cut$i")"
    fi
done

echo "$n_ok checks passed"
[ $fail -eq 0 ] && echo "all ok"
exit $fail
