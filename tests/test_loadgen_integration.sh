#!/usr/bin/env bash
# test_loadgen_integration.sh: runs gptd-bench for a few seconds against `gptd serve` on the tiny
# model (loopback, ephemeral port) and checks its report is complete and has zero errors.
# Usage: test_loadgen_integration.sh path/to/gptd path/to/gptd-bench
set -u
gptd="$1"
bench="$2"
. "$(dirname "$0")/common.sh"
model=$tiny_model
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$gptd" serve -m "$model" --port 0 --access-log false >"$work/out" 2>"$work/err" &
server_pid=$!
port=
for _ in $(seq 1 100); do
    port=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$work/err" | grep -oE '[0-9]+$' | head -n 1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || fail "server did not report its port: $(cat "$work/err")"
for _ in $(seq 1 100); do
    curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" | grep -q 200 && break
    sleep 0.1
done

"$bench" --url "http://127.0.0.1:$port" --concurrency 4 --duration 3 --prompt-tokens 8:32 \
    --max-tokens 4:16 --ignore-eos --json "$work/report.json" >"$work/table" 2>"$work/bench.err"
rc=$?
cat "$work/table"
[ $rc -eq 0 ] || fail "gptd-bench exited $rc: $(cat "$work/bench.err")"
for key in completed failed duration_s total_output_tokens request_throughput output_throughput \
    ttft_mean_ms ttft_p50_ms ttft_p90_ms ttft_p99_ms tpot_p50_ms itl_p50_ms itl_p99_ms \
    e2el_p50_ms e2el_p99_ms bench_cpu_s; do
    jq -e "has(\"$key\")" "$work/report.json" >/dev/null || fail "report lacks $key"
done
jq -e '.failed == 0' "$work/report.json" >/dev/null || fail "failed requests: $(jq .failed "$work/report.json")"
jq -e '.completed > 0 and .total_output_tokens >= .completed * 4' "$work/report.json" >/dev/null ||
    fail "too little output: $(cat "$work/report.json")"
jq -e '.ttft_p50_ms > 0 and .e2el_p99_ms >= .ttft_p50_ms' "$work/report.json" >/dev/null ||
    fail "implausible latencies: $(cat "$work/report.json")"
grep -q 'Output token throughput' "$work/table" || fail "no summary table"
# Usage errors exit 2 and name the problem.
"$bench" --bogus >/dev/null 2>"$work/usage"; [ $? -eq 2 ] || fail "unknown flag did not exit 2"
grep -q "unknown option '--bogus'" "$work/usage" || fail "unknown flag message"
"$bench" --concurrency 2 >/dev/null 2>&1; [ $? -eq 2 ] || fail "an unbounded run was accepted"
echo "ok: gptd-bench against gptd serve"
