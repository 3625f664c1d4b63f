#!/usr/bin/env bash
# test_openai_sdk.sh: the official OpenAI Node SDK (`openai` npm package, v4) drives `gptd serve`:
# a non-streaming and a streaming client.completions.create, the same for
# client.chat.completions.create (with logprobs), the SDK's error classes for a 400 and a 401
# (suite 'integration'). The package is installed once into the build directory
# (never into the source tree); without node/npm or the npm registry the test is skipped (77).
#
# Usage: test_openai_sdk.sh path/to/gptd
set -u
gptd="$1"
here="$(cd "$(dirname "$0")" && pwd)"
. "$(dirname "$0")/../common.sh"
model=$tiny_model
npm_dir="${GPTD_BUILD_DIR:-/tmp}/npm-openai"
command -v node >/dev/null && command -v npm >/dev/null || { echo "node/npm missing: skip"; exit 77; }
if [ ! -f "$npm_dir/node_modules/openai/package.json" ]; then
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-audit --no-fund --silent openai@4 >/dev/null 2>&1 ||
        { echo "cannot install the openai package: skip"; exit 77; }
fi
tmp=$(mktemp -d /tmp/gptd-sdk-test.XXXXXX)
# GPT-2 has no chat template: the SmolLM2 (ChatML) one from the goldens serves the chat calls.
"$gptd" serve -m "$model" --port 0 --api-key sk-sdk-test \
    --chat-template "$testdata_dir/chat/chatml_smollm2/template.jinja" >"$tmp/out" 2>"$tmp/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
    grep -q ' ready: ' "$tmp/err" && break
    sleep 0.05
done
port=$(grep ' ready: ' "$tmp/err" | sed -E 's/.*:([0-9]+)$/\1/')
[ -n "$port" ] || { cat "$tmp/err"; exit 1; }
# ESM resolves packages from the script's directory upwards, not NODE_PATH: run a copy placed
# beside the installed node_modules.
cp "$here/openai_sdk.mjs" "$npm_dir/openai_sdk.mjs"
node "$npm_dir/openai_sdk.mjs" "http://127.0.0.1:$port/v1" sk-sdk-test gpt2-tiny-random
