#!/usr/bin/env bash
# tests/web/test_playground.sh: runs test_playground.mjs (headless Chromium) against gptd serve.
#
#   test_playground.sh GPTD_BINARY MAKE_RANDOM_GPT2_BINARY
#
# The model is a random GPT-2 (4 layers, 512 wide, GPT-2's vocabulary and tokenizer from the
# tiny model of tests/data) written into the build directory: slow enough (~100 tokens/s) that a long
# generation is still running when the test presses Stop. playwright-core is installed from the
# committed package-lock.json into the build directory (npm ci), never into the source tree;
# the browser is Debian's chromium, which the README's test command installs.
set -euo pipefail
gptd=$(realpath "$1")
mkmodel=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
build=${GPTD_BUILD_DIR:-/tmp}
. "$here/../common.sh"
tiny=$tiny_model
command -v chromium >/dev/null || { echo "FAIL: chromium is not installed (apt-get install chromium)"; exit 1; }

npm_dir=$build/web-test
if ! cmp -s "$here/package-lock.json" "$npm_dir/package-lock.json" ||
    [ ! -f "$npm_dir/node_modules/playwright-core/package.json" ]; then
    mkdir -p "$npm_dir"
    cp "$here/package.json" "$here/package-lock.json" "$npm_dir/"
    npm ci --prefix "$npm_dir" --no-audit --no-fund --silent
fi
cp "$here/test_playground.mjs" "$npm_dir/"

model=$build/web-test/random-gpt2-512
if [ ! -f "$model/model.safetensors" ]; then
    "$mkmodel" "$model" --layers 4 --embd 512 --heads 8 --ctx 1024 --vocab 50257 --seed 11 >/dev/null
    cp "$tiny/tokenizer.json" "$model/"
fi

tmp=$(mktemp -d)
# A ChatML template from the goldens gives the page its chat mode (GPT-2 has no template).
"$gptd" serve -m "$model" --port 0 --threads 1 --access-log false \
    --chat-template "$testdata_dir/chat/chatml_smollm2/template.jinja" >/dev/null 2>"$tmp/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
port=
for _ in $(seq 1 600); do
    port=$(grep ' ready: ' "$tmp/err" | sed -E 's/.*:([0-9]+)$/\1/' || true)
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || { cat "$tmp/err"; exit 1; }
    sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: the server did not become ready"; cat "$tmp/err"; exit 1; }
# The same greedy run by `gptd generate` in its own process: the page and the API must agree
# with it too, not only with each other.
cli=$("$gptd" generate -m "$model" -p "The cat sat on the" -n 8 --ignore-eos --json 2>/dev/null | jq -r .text)
node "$npm_dir/test_playground.mjs" "http://127.0.0.1:$port" "$build" "$cli"
echo "screenshots: $build/playground.png, $build/playground-phone.png"
