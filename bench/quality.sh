#!/usr/bin/env bash
# quality.sh: what f16 and q8 weights cost in quality against float32 (issue 20; called by
# bench/run.sh, runs alone too: bash bench/quality.sh OUT_DIR). bench_quality on
#   - the bundled kjv-small over its held-out chapters (every 20th chapter of the KJV, written by
#     tools/train/heldout.py from Debian's bible-kjv, as its training script evaluates them);
#   - stories15M (the registry fixture, converted with tools/convert-llama2c) over
#     bench/data/story.txt, a fixed story written for this, in windows of 128 tokens.
# Writes OUT_DIR/quality.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-results}
mkdir -p "$out"
tmp=$(mktemp -d /tmp/gptd-quality.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
{
    echo "uptime: $(uptime)"
    python3 tools/train/heldout.py "$tmp/heldout.json" >/dev/null
    build/bench/bench_quality models/kjv-small "$tmp/heldout.json" --json
    echo
    bin=$(. tests/common.sh && registry_path stories15M stories15M.bin)
    tok=$(. tests/common.sh && registry_path stories15M tokenizer.bin)
    tools/convert-llama2c "$bin" "$tok" "$tmp/stories15M" >/dev/null
    build/bench/bench_quality "$tmp/stories15M" bench/data/story.txt --window 128
} >"$out/quality.txt" 2>&1
cat "$out/quality.txt"
