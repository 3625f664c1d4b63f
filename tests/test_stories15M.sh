#!/usr/bin/env bash
# tests/test_stories15M.sh: a real trained Llama, end to end. Takes karpathy's stories15M from
# the registry cache (tools/fetch-testdata stories15M), converts it with tools/convert-llama2c
# into a Hugging Face Llama directory, and checks it against llama2.c's own greedy run
# (tests/data/stories15M/expected.json):
#   - test_model_llama: logits and tokens through model_forward, batched and alone, narrow types;
#   - `gptd generate --prompt-ids`: the same 48 greedy tokens for each prompt;
#   - the converter refuses truncated files, impossible headers and a tokenizer of the wrong size.
#
#   test_stories15M.sh GPTD_BINARY TEST_MODEL_LLAMA_BINARY
set -u
gptd=$(realpath "$1")
test_bin=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
src=$(cd "$here/.." && pwd)
bin=$(registry_path stories15M stories15M.bin) || exit 1
tok=$(registry_path stories15M tokenizer.bin) || exit 1
tmp=$(mktemp -d /tmp/gptd_stories15M.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

model=$tmp/stories15M
if ! "$src/tools/convert-llama2c" "$bin" "$tok" "$model" >"$tmp/conv.log" 2>&1; then
    cat "$tmp/conv.log"
    echo "FAIL convert-llama2c"
    exit 1
fi
ok "convert-llama2c"

"$test_bin" "$model" || bad "test_model_llama"

expected=$here/data/stories15M/expected.json
for i in 0 1 2; do
    ids=$(jq -r ".cases[$i].prompt_ids | map(tostring) | join(\",\")" "$expected")
    want=$(jq -c ".cases[$i].ids" "$expected")
    got=$("$gptd" generate -m "$model" --prompt-ids "$ids" -n 48 --ignore-eos --json 2>"$tmp/err" |
        jq -c .ids)
    if [ "$got" = "$want" ]; then ok "gptd generate case $i"; else
        bad "gptd generate case $i: $got"
        cat "$tmp/err"
    fi
done

# Refusals.
expect_refused() { # name, expected message part, converter args...
    local name=$1 part=$2
    shift 2
    if "$src/tools/convert-llama2c" "$@" "$tmp/out-$name" >"$tmp/r.log" 2>&1; then
        bad "convert-llama2c accepted $name"
    elif grep -q -- "$part" "$tmp/r.log"; then
        ok "convert-llama2c refuses $name"
    else
        bad "convert-llama2c on $name said: $(cat "$tmp/r.log")"
    fi
}
head -c 1000000 "$bin" >"$tmp/truncated.bin"
expect_refused truncated "truncated" "$tmp/truncated.bin" "$tok"
printf '\x00\x00\x00\x00' | cat - <(tail -c +5 "$bin" | head -c 1000) >"$tmp/header.bin"
expect_refused bad-header "impossible header" "$tmp/header.bin" "$tok"
head -c 200000 "$tok" >"$tmp/short-tok.bin"
expect_refused short-tokenizer "tokens" "$bin" "$tmp/short-tok.bin"
exit $fail
