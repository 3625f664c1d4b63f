#!/usr/bin/env bash
# run.sh: reproduces the numbers in docs/PERFORMANCE.md with one command.
#
#   bash bench/run.sh [--quick]
#
# Builds (release), writes the 124M-shaped random model (fixed seed) into build/, then runs on
# this machine, one after another: the roofline probes and model benchmark (also f32 vs f16 vs q8
# weights, and a Llama of SmolLM2-135M's shape), the tokenizer and sampler benchmarks, the in-process engine benchmark, gptd-bench
# against `gptd serve` at concurrency 1, 4, 16, 32 and 64, wrk for per-request overhead, the chat
# route against completions (bench/chat.sh), multi-turn chat with the prefix cache on and off
# (bench/turns.sh), the engine through HTTP against the model alone (bench/step.sh), the quality
# of f16 and q8 weights (bench/quality.sh) and template rendering (bench_template). Raw outputs go to
# build/bench-results/; summary.md there holds the tables; the plots are written to
# docs/perf/ (gnuplot, SVG). Takes about 25 minutes (--quick: fewer requests, ~5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

out=build/bench-results
model=build/gpt2-124m-random
mkdir -p "$out" docs/perf

log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

bash tools/quickstart.sh deps
for p in gnuplot-nox wrk jq; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

# The 124M-shaped random model (written once) with GPT-2's tokenizer from the committed tiny model.
. bench/serve_lib.sh
bench_gpt2_model

{
    echo "# Machine"
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
    echo "- Memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "- OpenBLAS: $(dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null)," \
        "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
    echo "- gptd: $(build/gptd version)"
    echo "- Date: $(date -u +%Y-%m-%dT%H:%MZ), load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.md"

log "model benchmark (roofline probes, decode, prefill)"
build/bench/bench_model "$model" >"$out/model.txt" 2>&1 || true
log "model benchmark, f32 vs f16 vs q8 weights"
# The same model with its matmul weights rounded to 16 bits (--weights f16) and quantized to 8
# (--weights q8), the three runs interleaved three times so that a busy moment hits them all.
: >"$out/model-weights.txt"
for _ in 1 2 3; do
    for w in f32 f16 q8; do
        echo "== --weights $w" >>"$out/model-weights.txt"
        build/bench/bench_model "$model" --model-only --weights "$w" 2>&1 |
            grep -E '^(decode|prefill)' >>"$out/model-weights.txt" || true
    done
done
log "model benchmark, Llama family (SmolLM2-135M shape), f32 and f16 weights"
llama=build/smollm2-135m-random
if [ ! -f "$llama/model.safetensors" ]; then
    build/tools/make-random-gpt2 "$llama" --smollm2-135m --byte-tokenizer >/dev/null
fi
: >"$out/model-llama.txt"
for w in f32 f16; do
    echo "== --weights $w" >>"$out/model-llama.txt"
    build/bench/bench_model "$llama" --model-only --weights "$w" 2>&1 |
        grep -E '^(==|decode|prefill)' >>"$out/model-llama.txt" || true
done
log "tokenizer benchmark"
build/bench/bench_tokenizer tests/data/gpt2-tiny-random >"$out/tokenizer.txt" 2>&1 || true
# Llama 3's tokenizer (registry fixture; skipped with a note when it was never fetched).
if llama3=$(. tests/common.sh && registry_path tokenizer-llama3 tokenizer.json 2>&1); then
    echo "== Llama 3" >>"$out/tokenizer.txt"
    build/bench/bench_tokenizer "$(dirname "$llama3")" >>"$out/tokenizer.txt" 2>&1 || true
else
    echo "== Llama 3: $llama3" >>"$out/tokenizer.txt"
fi
log "sampler benchmark"
build/bench/bench_sampling >"$out/sampling.txt" 2>&1 || true
log "engine benchmark (in-process)"
if [ $quick -eq 1 ]; then
    build/bench/bench_engine "$model" --concurrency 1,16 --new 32 >"$out/engine.txt" 2>&1 || true
else
    build/bench/bench_engine "$model" >"$out/engine.txt" 2>&1 || true
fi

log "gptd serve + gptd-bench"
build/gptd serve -m "$model" --port 0 --access-log false --kv-cache-mb 1024 >"$out/serve.out" 2>"$out/serve.err" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
port=
for _ in $(seq 1 600); do
    port=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$out/serve.err" | grep -oE '[0-9]+$' | head -n 1 || true)
    if [ -n "$port" ] && curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" | grep -q 200; then
        break
    fi
    sleep 0.5
done
url="http://127.0.0.1:$port"
# Warm-up (page in the weights).
build/bench/gptd-bench --url "$url" --concurrency 4 --requests 8 --max-tokens 16 --ignore-eos --quiet >/dev/null || true
echo "concurrency completed failed tok_s ttft_p50 ttft_p99 itl_p50 itl_p99 tpot_p50 e2el_p99 bench_cpu_s" >"$out/serving.dat"
for c in 1 4 16 32 64; do
    n=$((c * 4 > 16 ? c * 4 : 16))
    [ $quick -eq 1 ] && n=$((c * 2 > 8 ? c * 2 : 8))
    log "gptd-bench concurrency $c ($n requests)"
    build/bench/gptd-bench --url "$url" --concurrency $c --requests $n --prompt-tokens 64 \
        --max-tokens 128 --ignore-eos --quiet --json "$out/serving-c$c.json" >"$out/serving-c$c.txt"
    jq -r "[$c, .completed, .failed, .output_throughput, .ttft_p50_ms, .ttft_p99_ms, .itl_p50_ms, .itl_p99_ms, .tpot_p50_ms, .e2el_p99_ms, .bench_cpu_s] | @tsv" \
        "$out/serving-c$c.json" | tr '\t' ' ' >>"$out/serving.dat"
done
log "wrk: non-streamed 1-token completions, 64 connections, 10 s"
wrk -t2 -c64 -d10s -s bench/wrk/completions.lua "$url" >"$out/wrk.txt" 2>&1 || true
kill $server_pid 2>/dev/null || true
wait $server_pid 2>/dev/null || true
trap - EXIT

log "chat vs completions through HTTP (Llama 3.1 tokenizer and template)"
bash bench/chat.sh "$out" >/dev/null || true
log "multi-turn chat, prefix cache on and off"
bash bench/turns.sh "$out" >/dev/null || true
log "step cost: the engine through HTTP against the model alone, 16 and 32 streams, f32 and f16"
bash bench/step.sh "$out" >/dev/null || true
log "quality of f16 and q8 weights against float32 (perplexity, greedy agreement)"
bash bench/quality.sh "$out" >/dev/null || true
log "chat template rendering"
build/bench/bench_template >"$out/template.txt" 2>&1 || true

log "plots"
gnuplot <<EOF
set terminal svg size 640,400 font "sans,11"
set datafile separator " "
set key top left
set grid
set logscale x 2
set xlabel "concurrent streams"
set output "docs/perf/throughput.svg"
set ylabel "generated tokens/s (all streams)"
set title "gptd: aggregate throughput vs concurrency (124M random model, 2 cores)"
plot "$out/serving.dat" every ::1 using 1:4 with linespoints lw 2 title "tokens/s"
set output "docs/perf/ttft.svg"
set ylabel "ms"
set logscale y
set title "gptd: time to first token vs concurrency"
plot "$out/serving.dat" every ::1 using 1:5 with linespoints lw 2 title "TTFT p50", \
     "$out/serving.dat" every ::1 using 1:6 with linespoints lw 2 title "TTFT p99"
EOF

{
    cat "$out/machine.md"
    echo
    echo "# Serving (gptd-bench, streaming, prompt 64 tokens, 128 new tokens, ignore_eos)"
    echo
    echo "| concurrency | completed | failed | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | TPOT p50 ms | E2EL p99 ms | gptd-bench CPU s |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    tail -n +2 "$out/serving.dat" | awk '{printf "| %d | %d | %d | %.1f | %.0f | %.0f | %.1f | %.1f | %.1f | %.0f | %.2f |\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11}'
    echo
    echo "# Engine (in-process)"
    echo '```'
    cat "$out/engine.txt"
    echo '```'
    echo "# Model"
    echo '```'
    cat "$out/model.txt"
    echo '```'
    echo "# Model, f32 vs f16 vs q8 matmul weights"
    echo '```'
    cat "$out/model-weights.txt"
    echo '```'
    echo "# Tokenizer"
    echo '```'
    tail -n 24 "$out/tokenizer.txt"
    echo '```'
    echo "# Sampler"
    echo '```'
    tail -n 20 "$out/sampling.txt"
    echo '```'
    echo "# Chat vs completions (HTTP) and template rendering"
    echo '```'
    cat "$out/chat.txt" "$out/template.txt" "$out/turns.txt"
    echo '```'
    echo "# Step cost: engine through HTTP vs the model alone"
    echo '```'
    cat "$out/step.txt"
    echo '```'
    echo "# Quality of f16 and q8 weights"
    echo '```'
    cat "$out/quality.txt"
    echo '```'
    echo "# wrk"
    echo '```'
    cat "$out/wrk.txt"
    echo '```'
} >"$out/summary.md"
log "done: $out/summary.md, docs/perf/throughput.svg, docs/perf/ttft.svg"
