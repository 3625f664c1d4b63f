#!/usr/bin/env bash
# test_generate_cli.sh: `gptd generate` end to end on the tiny golden model: --prompt-ids greedy
# output equals transformers' 48 greedy tokens for all 7 prompts; -p TEXT gives the same ids as
# the golden prompt ids; the JSON shape (logprobs, finish_reason); usage errors exit 2;
# without -m the default model answers; --weights f32/f16/bf16; --kv-cache-dtype f16.
# Usage: test_generate_cli.sh path/to/gptd   (fixtures from tests/data)
set -u
gptd="$1"
. "$(dirname "$0")/common.sh"
model=$tiny_model
golden="$model/golden/forward.json"
tmp=$(mktemp -d /tmp/gptd_generate_cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
n_prompts=$(jq '.prompts | length' "$golden")
for ((i = 0; i < n_prompts; i++)); do
    ids=$(jq -r ".prompts[$i].prompt_ids | map(tostring) | join(\",\")" "$golden")
    want=$(jq -c ".prompts[$i].greedy_ids" "$golden")
    if ! "$gptd" generate -m "$model" --prompt-ids "$ids" -n 48 --ignore-eos --json \
        >"$tmp/out.json" 2>"$tmp/err"; then
        echo "FAIL prompt $i: exit $?"; cat "$tmp/err"; fail=1; continue
    fi
    got=$(jq -c '.ids' "$tmp/out.json")
    if [ "$got" != "$want" ]; then
        echo "FAIL prompt $i: greedy ids differ"; echo " got  $got"; echo " want $want"; fail=1
    else
        echo "ok   prompt $i greedy ids"
    fi
done

# -p TEXT is tokenized to the golden prompt ids; logprobs have K entries, best first.
text=$(jq -r '.prompts[0].prompt' "$golden")
"$gptd" generate -m "$model" -p "$text" -n 3 --ignore-eos --logprobs 3 --json >"$tmp/p.json" 2>"$tmp/err" || {
    echo "FAIL -p: exit $?"; cat "$tmp/err"; fail=1; }
if [ "$(jq -c '.prompt_ids' "$tmp/p.json")" != "$(jq -c '.prompts[0].prompt_ids' "$golden")" ]; then
    echo "FAIL -p prompt ids: $(jq -c '.prompt_ids' "$tmp/p.json")"; fail=1
else
    echo "ok   -p prompt ids"
fi
check_json() { # description, jq expression that must be true
    if [ "$(jq "$2" "$tmp/p.json")" != "true" ]; then echo "FAIL $1"; fail=1; else echo "ok   $1"; fi
}
check_json "three logprob entries" '.logprobs | length == 3'
check_json "top-3 per entry, sorted" '[.logprobs[].top | length == 3 and .[0][1] >= .[1][1] and .[1][1] >= .[2][1]] | all'
check_json "greedy id is the top-1 and its logprob" '[.logprobs[] | .id == .top[0][0] and .logprob == .top[0][1] and .logprob <= 0] | all'
check_json "finish_reason length" '.finish_reason == "length"'
check_json "text is a string" '.text | type == "string"'

# Usage errors.
expect_exit() { # name, code, args...
    local name="$1" want="$2"
    shift 2
    "$gptd" generate "$@" >/dev/null 2>"$tmp/err"
    local got=$?
    if [ "$got" != "$want" ]; then echo "FAIL $name: exit $got, want $want"; cat "$tmp/err"; fail=1; else echo "ok   $name"; fi
}
expect_exit no-prompt 2 -m "$model"
# Without -m the bundled model (models/kjv-small, its own 4096-token vocabulary) runs.
bundled=${GPTD_SOURCE_DIR:-$(dirname "$0")/..}/models/kjv-small
if "$gptd" generate -p " And God" -n 2 --ignore-eos --json >"$tmp/d.json" 2>"$tmp/err" &&
    [ "$(jq -c '.prompt_ids' "$tmp/d.json")" = "$("$gptd" tokenize -m "$bundled" --json <(printf ' And God') 2>/dev/null | jq -c .)" ] &&
    [ "$(jq '.prompt_ids | length' "$tmp/d.json")" = "2" ] &&
    [ "$(jq '.ids | length' "$tmp/d.json")" = "2" ]; then
    echo "ok   no -m: default model"
else
    echo "FAIL no -m: default model"; cat "$tmp/err" "$tmp/d.json"; fail=1
fi
expect_exit both-prompts 2 -m "$model" -p hi --prompt-ids 1
expect_exit bad-ids 2 -m "$model" --prompt-ids 1,,2
expect_exit bad-n 2 -m "$model" --prompt-ids 1 -n x
expect_exit id-outside-vocab 1 -m "$model" --prompt-ids 50257
expect_exit missing-model-dir 1 -m "$tmp/nope" --prompt-ids 1
expect_exit bad-weights 2 -m "$model" --prompt-ids 1 --weights fp16
expect_exit bad-kv-dtype 2 -m "$model" --prompt-ids 1 --kv-cache-dtype bf16

# --weights: f32 is the float32 checkpoint as is (the golden greedy ids); f16 and bf16 round (q8
# quantizes) the matmul weights, say so in the log, and still run the 48 steps.
ids=$(jq -r '.prompts[0].prompt_ids | map(tostring) | join(",")' "$golden")
for w in f32 f16 bf16 q8; do
    if "$gptd" generate -m "$model" --prompt-ids "$ids" -n 48 --ignore-eos --json --weights "$w" \
        >"$tmp/w.json" 2>"$tmp/err" && grep -q "matmuls in $w" "$tmp/err" &&
        [ "$(jq '.ids | length' "$tmp/w.json")" = 48 ] &&
        { [ "$w" != f32 ] || [ "$(jq -c .ids "$tmp/w.json")" = "$(jq -c '.prompts[0].greedy_ids' "$golden")" ]; }; then
        echo "ok   --weights $w"
    else
        echo "FAIL --weights $w"; cat "$tmp/err"; fail=1
    fi
done
# --kv-cache-dtype f16: 48 steps, and the first greedy token still transformers' (the rounded
# K/V move the logits by ~1e-3).
if "$gptd" generate -m "$model" --prompt-ids "$ids" -n 48 --ignore-eos --json --kv-cache-dtype f16 \
    >"$tmp/kv.json" 2>"$tmp/err" && [ "$(jq '.ids | length' "$tmp/kv.json")" = 48 ] &&
    [ "$(jq '.ids[0]' "$tmp/kv.json")" = "$(jq '.prompts[0].greedy_ids[0]' "$golden")" ]; then
    echo "ok   --kv-cache-dtype f16"
else
    echo "FAIL --kv-cache-dtype f16"; cat "$tmp/err"; fail=1
fi
exit $fail
