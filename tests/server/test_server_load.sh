#!/usr/bin/env bash
# test_server_load.sh: `gptd serve` under load tools (suite 'integration'): ab and wrk with
# non-streaming POSTs must finish with zero errors and zero non-2xx answers, and 500 streams
# open at once on a pool of 4 HTTP threads must all end with [DONE] (no HTTP thread waits for
# the engine: waiting connections are suspended). Short runs: this checks correctness under
# concurrency, not speed (numbers live in docs/PERFORMANCE.md).
#
# Usage: test_server_load.sh path/to/gptd   (skips, exit 77, when ab or wrk is missing)
set -u
gptd="$1"
. "$(dirname "$0")/../common.sh"
model=$tiny_model
command -v ab >/dev/null && command -v wrk >/dev/null || { echo "ab/wrk not installed: skip"; exit 77; }
tmp=$(mktemp -d /tmp/gptd-load-test.XXXXXX)
pid=""
fail=0
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
bad() { echo "FAIL $*"; fail=1; }

"$gptd" serve -m "$model" --port 0 --http-threads 4 --max-queue 512 --access-log false \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 100); do
    grep -q ' ready: ' "$tmp/err" && break
    sleep 0.05
done
port=$(grep ' ready: ' "$tmp/err" | sed -E 's/.*:([0-9]+)$/\1/')
[ -n "$port" ] || { cat "$tmp/err"; exit 1; }
url="http://127.0.0.1:$port/v1/completions"
# temperature 0: every answer has the same length, which ab checks ("Length" failures)
printf '{"prompt":"Hello, world","max_tokens":4,"temperature":0}' >"$tmp/body.json"

# ab: plain and keep-alive
for k in "" "-k"; do
    ab $k -q -n 200 -c 8 -p "$tmp/body.json" -T application/json "$url" >"$tmp/ab" 2>&1
    grep -q '^Complete requests: *200$' "$tmp/ab" || bad "ab $k: $(grep -E 'Complete|Failed' "$tmp/ab")"
    grep -q '^Failed requests: *0$' "$tmp/ab" || bad "ab $k: $(grep 'Failed' -A1 "$tmp/ab")"
    grep -q 'Non-2xx' "$tmp/ab" && bad "ab $k: $(grep 'Non-2xx' "$tmp/ab")"
    echo "ab $k: $(grep -E 'Requests per second' "$tmp/ab")"
done

# wrk: keep-alive POSTs from 2 threads and 8 connections
cat >"$tmp/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"prompt":"Hello, world","max_tokens":4,"temperature":0}'
wrk.headers["Content-Type"] = "application/json"
EOF
wrk -t2 -c8 -d3s -s "$tmp/post.lua" "$url" >"$tmp/wrk" 2>&1
grep -q 'Non-2xx' "$tmp/wrk" && bad "wrk: $(grep 'Non-2xx' "$tmp/wrk")"
grep -q 'Socket errors' "$tmp/wrk" && bad "wrk: $(grep 'Socket errors' "$tmp/wrk")"
grep -Eq '^ +[0-9]+ requests in' "$tmp/wrk" || bad "wrk did not run: $(cat "$tmp/wrk")"
echo "wrk: $(grep -E 'requests in|Requests/sec' "$tmp/wrk" | tr -s ' ' | tr '\n' ' ')"

# 500 concurrent streams: two curl processes with 250 parallel transfers each
# (in a curl config file header and data apply to every transfer; url/output come in pairs)
for half in a b; do
    printf 'header = "Content-Type: application/json"\nno-buffer\n' >"$tmp/cfg$half"
    printf 'data = "{\\"prompt\\":\\"Hello\\",\\"max_tokens\\":16,\\"ignore_eos\\":true,\\"stream\\":true}"\n' >>"$tmp/cfg$half"
    for i in $(seq 1 250); do
        printf 'url = "%s"\noutput = "%s/s%s%d"\n' "$url" "$tmp" "$half" "$i" >>"$tmp/cfg$half"
    done
done
curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 250 -K "$tmp/cfga" &
ca=$!
curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 250 -K "$tmp/cfgb" &
cb=$!
wait "$ca" "$cb"
n_done=$(grep -l '^data: \[DONE\]$' "$tmp"/s[ab]* 2>/dev/null | wc -l)
[ "$n_done" = 500 ] || bad "500 streams: only $n_done ended with [DONE]"
echo "500 concurrent streams: $n_done ended with [DONE]"
s=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
[ "$s" = 200 ] || bad "health after load: $s"
[ $fail -eq 0 ] && echo "all ok"
exit $fail
