#!/usr/bin/env bash
# tests/test_stories15M.sh: a real trained Llama, end to end. Takes karpathy's stories15M from
# the registry cache (tools/fetch-testdata stories15M), converts it with tools/convert-llama2c
# into a Hugging Face Llama directory, and checks it against llama2.c's own greedy run
# (tests/data/stories15M/expected.json):
#   - test_model_llama: logits and tokens through model_forward, batched and alone, narrow types;
#   - `gptd generate --prompt-ids`: the same 48 greedy tokens for each prompt;
#   - the converted tokenizer: `gptd tokenize` of each prompt gives its prompt ids (BOS 1
#     included), `gptd generate -p` the same tokens as --prompt-ids, and SentencePiece's own ids
#     for every case of tests/data/tokenizers/llama2-sentencepiece/visible.json;
#   - `gptd serve`: POST /tokenize adds BOS unless "add_special_tokens": false, a completion
#     of prompt text starts from BOS and keeps its first token's leading space (vLLM's text),
#     and the three prompts served at once (with two sampled requests beside them) give the
#     text `gptd generate` gives for each alone;
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
server_pid=
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
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

# The tokenizer convert-llama2c wrote: SentencePiece's ids, BOS included.
for i in 0 1 2; do
    prompt=$(jq -r ".cases[$i].prompt" "$expected")
    want=$(jq -c ".cases[$i].prompt_ids" "$expected")
    got=$(printf '%s' "$prompt" | "$gptd" tokenize -m "$model" --json - 2>"$tmp/err" | tr -d ' ')
    if [ "$got" = "$want" ]; then ok "gptd tokenize prompt $i"; else
        bad "gptd tokenize prompt $i: $got, want $want"
        cat "$tmp/err"
    fi
done
# -p TEXT adds BOS as the server does, so it generates what --prompt-ids generated.
prompt=$(jq -r ".cases[0].prompt" "$expected")
want=$(jq -c ".cases[0].ids" "$expected")
got=$("$gptd" generate -m "$model" -p "$prompt" -n 48 --ignore-eos --json 2>"$tmp/err" | jq -c .ids)
if [ "$got" = "$want" ]; then ok "gptd generate -p (BOS added)"; else
    bad "gptd generate -p: $got"
    cat "$tmp/err"
fi
golden=$here/data/tokenizers/llama2-sentencepiece/visible.json
jq -c '.cases[].text' "$golden" >"$tmp/texts.jsonl"
jq -c '.cases[].ids' "$golden" >"$tmp/want.jsonl"
if "$gptd" tokenize -m "$model" --jsonl "$tmp/texts.jsonl" 2>"$tmp/err" | tr -d ' ' >"$tmp/got.jsonl" &&
    [ "$(wc -l <"$tmp/want.jsonl")" -ge 20 ] && cmp -s "$tmp/got.jsonl" "$tmp/want.jsonl"; then
    ok "converted tokenizer matches SentencePiece on $(wc -l <"$tmp/want.jsonl") strings"
else
    bad "converted tokenizer differs from SentencePiece:"
    diff "$tmp/want.jsonl" "$tmp/got.jsonl" | head -20
    cat "$tmp/err"
fi

# Over HTTP: the server tokenizes as transformers and vLLM do by default.
"$gptd" serve -m "$model" --host 127.0.0.1 --port 0 >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
port=
for _ in $(seq 1 200); do
    if grep -q ' ready: ' "$tmp/serve.err"; then
        port=$(grep ' ready: ' "$tmp/serve.err" | sed -E 's/.*:([0-9]+)$/\1/')
        break
    fi
    sleep 0.05
done
if [ -z "$port" ]; then
    bad "gptd serve did not start: $(cat "$tmp/serve.err")"
else
    post() { curl -s -H 'Content-Type: application/json' --data-binary "$2" "http://127.0.0.1:$port$1"; }
    got=$(post /tokenize '{"prompt": "Once upon a time"}' | jq -c .tokens)
    if [ "$got" = "[1,9038,2501,263,931]" ]; then ok "POST /tokenize adds BOS"; else
        bad "POST /tokenize: $got"
    fi
    got=$(post /tokenize '{"prompt": "Once upon a time", "add_special_tokens": false}' | jq -c .tokens)
    if [ "$got" = "[9038,2501,263,931]" ]; then ok "POST /tokenize add_special_tokens false"; else
        bad "POST /tokenize add_special_tokens false: $got"
    fi
    # llama2.c's greedy run of "Lily wanted to" (BOS first) begins " make a picture for her mom".
    post /v1/completions '{"prompt": "Lily wanted to", "max_tokens": 6, "temperature": 0}' >"$tmp/c.json"
    if [ "$(jq -r .usage.prompt_tokens "$tmp/c.json")" = 5 ] &&
        [ "$(jq -r '.choices[0].text' "$tmp/c.json")" = " make a picture for her mom" ]; then
        ok "POST /v1/completions: BOS added, leading space kept"
    else
        bad "POST /v1/completions: $(cat "$tmp/c.json")"
    fi
    # The three prompts (as token ids) and two sampled requests at once: each greedy completion
    # is the text `gptd generate` gives for the same ids alone (whose ids equal llama2.c's).
    for i in 0 1 2; do
        ids=$(jq -c ".cases[$i].prompt_ids" "$expected")
        "$gptd" generate -m "$model" --prompt-ids "$(jq -r ".cases[$i].prompt_ids | map(tostring) | join(\",\")" "$expected")" \
            -n 48 --ignore-eos --json 2>/dev/null | jq -r .text >"$tmp/alone$i.txt"
        post /v1/completions "{\"prompt\": $ids, \"max_tokens\": 48, \"temperature\": 0, \"ignore_eos\": true}" \
            >"$tmp/batch$i.json" &
    done
    for i in 0 1; do
        post /v1/completions "{\"prompt\": \"The dog\", \"max_tokens\": 40, \"temperature\": 0.9, \"seed\": $i}" \
            >"$tmp/other$i.json" &
    done
    wait $(jobs -p | grep -v "^$server_pid\$")
    for i in 0 1 2; do
        if [ "$(jq -r '.choices[0].text' "$tmp/batch$i.json")" = "$(cat "$tmp/alone$i.txt")" ] &&
            [ -s "$tmp/alone$i.txt" ]; then
            ok "served in a batch = generated alone, prompt $i"
        else
            bad "served prompt $i: $(cat "$tmp/batch$i.json") vs $(cat "$tmp/alone$i.txt")"
        fi
    done
    for i in 0 1; do
        [ "$(jq -r '.choices[0].finish_reason' "$tmp/other$i.json")" != null ] ||
            bad "sampled request $i: $(cat "$tmp/other$i.json")"
    done
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=
fi

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
