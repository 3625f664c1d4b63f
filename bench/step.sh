#!/usr/bin/env bash
# step.sh: the engine through HTTP against the model alone (issue 19's step cost; called by
# bench/run.sh, runs alone too: bash bench/step.sh OUT_DIR).
#
# For --weights f32, f16 and q8 and 1, 16 and 32 streams: bench_model decodes at that batch
# with a 96-token context (the mean context of a 32-token prompt growing to 160; median of
# three runs), once with every sequence's own K/V (--private-kv, what a server decodes) and once
# with forks of one prompt (shared blocks, as bench_model's default table); then `gptd serve`
# with the same weights gets gptd-bench with 32-token prompts, 128 new tokens, ignore_eos,
# 2 x C requests (at least 4), and the engine's per-phase step timers
# (gptd_engine_phase_seconds_total) are read from /metrics before and after. Writes
# OUT_DIR/step.txt (one line per run, with the ratio of HTTP to model tok/s) and
# OUT_DIR/step-<weights>-c<C>.json. GPTD_STEP_WEIGHTS / GPTD_STEP_STREAMS narrow the runs
# (e.g. "q8", "1").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-results}
mkdir -p "$out"
. bench/serve_lib.sh
bench_gpt2_model

# Sum of each phase's seconds in a /metrics text: "schedule forward sample output finish".
phases() {
    awk -F'[{}"]' '/^gptd_engine_phase_seconds_total/ { split($0, f, " "); s[$3] = f[2] }
        END { printf "%s %s %s %s %s\n", s["schedule"], s["forward"], s["sample"], s["output"], s["finish"] }' "$1"
}
# Decode tokens/s of the model alone (bench_model's mean over its timed steps), the median of
# three runs: one run moves by +-20 % on a shared VM.
model_tps() {
    for _ in 1 2 3; do
        build/bench/bench_model "$model" --model-only --weights "$1" --batch "$2" --ctx 96 $3 \
            2>/dev/null | sed -nE 's/^decode batch.*: +([0-9.]+) tok\/s mean.*/\1/p'
    done | sort -n | sed -n 2p
}

echo "uptime: $(uptime)" >"$out/step.txt"
echo "weights streams model_private_tok_s model_shared_tok_s http_tok_s http/private http/shared" \
    "ttft_p50_ms ttft_p99_ms itl_p50_ms itl_p99_ms duration_s schedule_s forward_s sample_s" \
    "output_s finish_s" >>"$out/step.txt"
for w in ${GPTD_STEP_WEIGHTS:-f32 f16 q8}; do
    bench_serve "$out/step-serve" -m "$model" --kv-cache-mb 1024 --weights "$w"
    url="http://127.0.0.1:$bench_port"
    build/bench/gptd-bench --url "$url" --concurrency 4 --requests 8 --max-tokens 16 \
        --ignore-eos --quiet >/dev/null || true
    for c in ${GPTD_STEP_STREAMS:-1 16 32}; do
        curl -s "$url/metrics" >"$out/step-metrics-0"
        build/bench/gptd-bench --url "$url" --concurrency "$c" --requests $((c > 2 ? 2 * c : 4)) \
            --prompt-tokens 32 --max-tokens 128 --ignore-eos --quiet \
            --json "$out/step-$w-c$c.json" >/dev/null || true
        curl -s "$url/metrics" >"$out/step-metrics-1"
        # The model alone runs while the server idles (its engine thread sleeps).
        private=$(model_tps "$w" "$c" --private-kv)
        shared=$(model_tps "$w" "$c" "")
        jq -r '[.output_throughput, .ttft_p50_ms, .ttft_p99_ms, .itl_p50_ms, .itl_p99_ms, .duration_s] | @tsv' \
            "$out/step-$w-c$c.json" | tr '\t' ' ' | awk -v w="$w" -v c="$c" -v p="$private" \
            -v sh="$shared" -v before="$(phases "$out/step-metrics-0")" \
            -v after="$(phases "$out/step-metrics-1")" \
            '{ split(before, t0, " "); split(after, t1, " ")
               printf "%s %d %.1f %.1f %.1f %.2f %.2f %.0f %.0f %.1f %.1f %.1f %.3f %.2f %.2f %.2f %.3f\n",
                   w, c, p, sh, $1, (p > 0 ? $1 / p : 0), (sh > 0 ? $1 / sh : 0), $2, $3, $4, $5, $6,
                   t1[1] - t0[1], t1[2] - t0[2], t1[3] - t0[3], t1[4] - t0[4], t1[5] - t0[5] }' \
            >>"$out/step.txt"
    done
    bench_stop
done
rm -f "$out/step-metrics-0" "$out/step-metrics-1"
cat "$out/step.txt"
