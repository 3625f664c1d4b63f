#!/usr/bin/env bash
# test_nginx.sh: config/nginx.conf in front of two real `gptd serve` replicas, all on loopback
# (issue 12). nginx runs as this script's own process (-p TMPDIR, daemon off), never the system
# service. Checks: a streamed completion through nginx arrives incrementally; requests spread over
# both replicas (both /metrics count completions); after one replica is killed, non-streamed
# requests still succeed through the other (proxy_next_upstream).
# Usage: test_nginx.sh path/to/gptd
set -u
gptd="$1"
. "$(dirname "$0")/../common.sh"
model=$tiny_model
conf_src="$(cd "$(dirname "$0")/../.." && pwd)/config/nginx.conf"
command -v nginx >/dev/null || { echo "SKIP: nginx not installed"; exit 77; }
[ -d "$model" ] || { echo "SKIP: no test model at $model"; exit 77; }

work=$(mktemp -d)
chmod 755 "$work" # nginx workers drop to `nobody` when the test runs as root
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    tail -n 5 "$work"/*.err 2>/dev/null
    exit 1
}

# start_replica NAME: one gptd on an ephemeral port; sets replica_pid and replica_port.
start_replica() {
    "$gptd" serve -m "$model" --port 0 --access-log false --http-threads 2 \
        >/dev/null 2>"$work/$1.err" &
    replica_pid=$!
    pids+=("$replica_pid")
    replica_port=
    local _
    for _ in $(seq 1 100); do
        replica_port=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$work/$1.err" |
            grep -oE '[0-9]+$' | head -n 1)
        if [ -n "$replica_port" ] && curl -sf "http://127.0.0.1:$replica_port/health" >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    fail "replica $1 did not start"
}
start_replica a
pid_a=$replica_pid
port_a=$replica_port
start_replica b
pid_b=$replica_pid
port_b=$replica_port

# nginx cannot report an ephemeral port, so try a few random high ports until one binds.
nginx_pid=
for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    # Render: the listen port and both upstream servers on loopback; everything else as shipped.
    sed -e "s/^\( *\)listen 8080;/\1listen 127.0.0.1:$port;/" \
        -e "s/server gptd-1:8080/server 127.0.0.1:$port_a/" \
        -e "s/server gptd-2:8080/server 127.0.0.1:$port_b/" "$conf_src" >"$work/nginx.conf"
    grep -q "listen 127.0.0.1:$port;" "$work/nginx.conf" || fail "render: no listen line"
    grep -q "server 127.0.0.1:$port_b" "$work/nginx.conf" || fail "render: no upstream lines"
    mkdir -p "$work/temp"
    nginx -p "$work" -c "$work/nginx.conf" -e stderr -g 'daemon off;' 2>"$work/nginx.err" &
    nginx_pid=$!
    for _ in $(seq 1 50); do
        curl -sf "http://127.0.0.1:$port/nginx-health" >/dev/null && break 2
        kill -0 "$nginx_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$nginx_pid" 2>/dev/null
    wait "$nginx_pid" 2>/dev/null
    nginx_pid=
done
[ -n "$nginx_pid" ] || fail "nginx did not start: $(cat "$work/nginx.err")"
pids+=("$nginx_pid")
lb="http://127.0.0.1:$port"

# 1. Streaming arrives incrementally: timestamp every line as curl -N hands it over. With a
#    buffering proxy the events would arrive together at the end; here the first event must
#    come in the first half of the stream's duration (a ratio, not a fixed time).
t0=$EPOCHREALTIME
curl -sN "$lb/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt":"Once upon a time","max_tokens":384,"stream":true,"ignore_eos":true}' |
    while IFS= read -r line; do
        case "$line" in
        data:*) printf '%s %s\n' "$EPOCHREALTIME" "${line:0:40}" ;;
        esac
    done >"$work/stream"
events=$(grep -c 'data: {' "$work/stream")
grep -q 'data: \[DONE\]' "$work/stream" || fail "stream did not end with [DONE]: $(tail -n 2 "$work/stream")"
[ "$events" -ge 32 ] || fail "only $events events streamed"
first=$(head -n 1 "$work/stream" | cut -d' ' -f1)
last=$(grep 'data: \[DONE\]' "$work/stream" | cut -d' ' -f1)
if ! awk -v t0="$t0" -v f="$first" -v l="$last" 'BEGIN { exit !((f - t0) < 0.5 * (l - t0)) }'; then
    fail "first event at +$(awk -v a="$first" -v b="$t0" 'BEGIN{print a-b}')s, last at +$(awk -v a="$last" -v b="$t0" 'BEGIN{print a-b}')s: not incremental"
fi
echo "ok: $events events streamed through nginx; first at +$(awk -v a="$first" -v b="$t0" 'BEGIN{printf "%.4f", a-b}') s, last at +$(awk -v a="$last" -v b="$t0" 'BEGIN{printf "%.4f", a-b}') s"

# 2. Requests spread over both replicas: 4 pairs of concurrent requests (least_conn gives the
#    second of a pair to the idle replica), then both replicas' /metrics must count completions.
for _ in 1 2 3 4; do
    pair=()
    for j in 1 2; do
        curl -sf -o /dev/null "$lb/v1/completions" -H 'Content-Type: application/json' \
            -d '{"prompt":"Hello","max_tokens":48}' &
        pair+=($!)
    done
    wait_ok=0
    for j in "${pair[@]}"; do
        wait "$j" || wait_ok=1
    done
    [ $wait_ok -eq 0 ] || fail "a completion through nginx failed"
done
completed() { # port -> count of 200s on /v1/completions
    curl -sf "http://127.0.0.1:$1/metrics" |
        awk '/^gptd_http_requests_total\{route="\/v1\/completions",status="200"\}/ { s += $2 } END { print s + 0 }'
}
count_a=$(completed "$port_a")
count_b=$(completed "$port_b")
[ "$count_a" -ge 1 ] && [ "$count_b" -ge 1 ] ||
    fail "requests did not spread: replica a counted $count_a, replica b $count_b"
[ $((count_a + count_b)) -eq 9 ] || fail "replicas counted $count_a + $count_b completions, expected 9"
echo "ok: replica a served $count_a, replica b served $count_b"

# 3. Failover: kill replica a (by its PID); every new non-streamed request must still succeed.
kill -KILL "$pid_a"
wait "$pid_a" 2>/dev/null
before_b=$(completed "$port_b")
for i in 1 2 3 4 5 6; do
    status=$(curl -s -o "$work/body" -w '%{http_code}' "$lb/v1/completions" \
        -H 'Content-Type: application/json' -d '{"prompt":"Hello","max_tokens":8}')
    [ "$status" = 200 ] || fail "request $i after killing replica a: status $status: $(cat "$work/body")"
    jq -e '.usage.completion_tokens == 8' "$work/body" >/dev/null || fail "body: $(cat "$work/body")"
done
after_b=$(completed "$port_b")
[ $((after_b - before_b)) -eq 6 ] || fail "replica b counted $((after_b - before_b)) of 6 failover requests"
echo "ok: 6 of 6 requests succeeded with replica a dead"
