#!/usr/bin/env bash
# chat.sh: what the chat route costs over plain completions, through HTTP (called by
# bench/run.sh; runs alone too: bash bench/chat.sh OUT_DIR).
#
# A random Llama of SmolLM2-135M's shape with Llama 3's 128,256-token vocabulary carries the
# real Llama 3.1 tokenizer and chat template (registry fixture tokenizer-llama3_1; skipped with
# a note when it was never fetched). gptd-bench sends the same word prompts (64 words, 64 new
# tokens, ignore_eos) as completions (--prompt-text) and as one user message (--chat) at 1 and
# 16 streams; the difference is the template render, the special-token parse and the chat
# chunks' bytes. Writes OUT_DIR/chat.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-results}
mkdir -p "$out"
if ! tok=$(. tests/common.sh && registry_path tokenizer-llama3_1 tokenizer.json 2>&1); then
    echo "chat benchmark skipped: $tok" >"$out/chat.txt"
    exit 0
fi
model=build/llama3-chat-135m-random
if [ ! -f "$model/model.safetensors" ]; then
    build/tools/make-random-gpt2 "$model" --smollm2-135m --vocab 128256 >/dev/null
fi
cp "$(dirname "$tok")/tokenizer.json" "$(dirname "$tok")/tokenizer_config.json" "$model/"
. bench/serve_lib.sh
bench_serve "$out/chat-serve" -m "$model"
url="http://127.0.0.1:$bench_port"
build/bench/gptd-bench --url "$url" --concurrency 4 --requests 8 --max-tokens 8 --ignore-eos \
    --prompt-text --quiet >/dev/null || true
{
    echo "uptime: $(uptime)"
    echo "model: $model (SmolLM2-135M shape, vocab 128256, f32), Llama 3.1 tokenizer + template"
    echo "route concurrency requests tok_s ttft_p50_ms ttft_p99_ms itl_p50_ms itl_p99_ms"
    for c in 1 16; do
        n=$((c * 4 > 16 ? c * 4 : 16))
        for route in completions chat; do
            flag=--prompt-text
            [ "$route" = chat ] && flag=--chat
            build/bench/gptd-bench --url "$url" --concurrency $c --requests $n --prompt-tokens 64 \
                --max-tokens 64 --ignore-eos $flag --seed 5 --quiet --json "$out/chat-$route-c$c.json" \
                >/dev/null
            jq -r "[\"$route\", $c, .completed, .output_throughput, .ttft_p50_ms, .ttft_p99_ms, .itl_p50_ms, .itl_p99_ms] | @tsv" \
                "$out/chat-$route-c$c.json" | tr '\t' ' '
        done
    done
} >"$out/chat.txt"
bench_stop
cat "$out/chat.txt"
