#!/usr/bin/env bash
# turns.sh: multi-turn chat through HTTP with the prefix cache on and off (called by
# bench/run.sh; runs alone too: bash bench/turns.sh OUT_DIR).
#
# The 124M-shaped random GPT-2 of bench/run.sh serves chat with a ChatML template
# (tests/data/chat/chatml_smollm2, given by --chat-template). gptd-bench --chat --turns 5 runs
# conversations one at a time: each request resends the history plus a new user message of 50
# words, answers are 100 tokens (ignore_eos, greedy), so turn 5 sends about 850 tokens and the
# conversation ends near 950 (the model's context is 1,024). The same
# run with --prefix-cache off gives the cold TTFT of every turn. Writes OUT_DIR/turns.txt and
# OUT_DIR/turns-{on,off}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-results}
mkdir -p "$out"
. bench/serve_lib.sh
bench_gpt2_model
template=tests/data/chat/chatml_smollm2/template.jinja
requests=${GPTD_TURNS_REQUESTS:-15}
for mode in on off; do
    bench_serve "$out/turns-serve" -m "$model" --kv-cache-mb 1024 --chat-template "$template" \
        --prefix-cache "$mode"
    build/bench/gptd-bench --url "http://127.0.0.1:$bench_port" --chat --turns 5 --concurrency 1 \
        --requests "$requests" --prompt-tokens 50 --max-tokens 100 --ignore-eos --seed 3 --quiet \
        --json "$out/turns-$mode.json" >"$out/turns-$mode.txt" || true
    bench_stop
done
{
    echo "uptime: $(uptime)"
    echo "turn ttft_p50_cache_on_ms ttft_p50_cache_off_ms ratio cached_tokens_mean"
    for t in 1 2 3 4 5; do
        on=$(jq ".turns[$((t - 1))].ttft_p50_ms" "$out/turns-on.json")
        off=$(jq ".turns[$((t - 1))].ttft_p50_ms" "$out/turns-off.json")
        cached=$(jq ".turns[$((t - 1))].cached_tokens_mean" "$out/turns-on.json")
        awk -v t="$t" -v on="$on" -v off="$off" -v c="$cached" \
            'BEGIN { printf "%d %.1f %.1f %.3f %.1f\n", t, on, off, (off > 0 ? on / off : 0), c }'
    done
} >"$out/turns.txt"
cat "$out/turns.txt"
