#!/usr/bin/env bash
# test_sampling_cli.sh: the sampling flags of `gptd generate` end to end on the tiny golden model.
#   --temperature 0 equals transformers' greedy tokens; --repetition-penalty 1.3 greedy equals
#   transformers' generate(repetition_penalty=1.3); a seeded sample is identical across runs and
#   another seed gives another; --stop cuts the text right before the stop string; a stop token
#   id ends the output (and min_tokens defers it); --logit-bias -100 bans; out-of-range values
#   are usage errors naming the parameter.
# Usage: test_sampling_cli.sh path/to/gptd   (fixtures from tests/data)
set -u
gptd="$1"
. "$(dirname "$0")/common.sh"
model=$tiny_model
fwd="$model/golden/forward.json"
gen="$model/golden/generate.json"
tmp=$(mktemp -d /tmp/gptd_sampling_cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }
run() { # output file, generate args...
    local out="$1"
    shift
    "$gptd" generate -m "$model" --json "$@" >"$out" 2>"$tmp/err" || {
        bad "exit $? for: $*"; cat "$tmp/err"; echo '{}' >"$out"; }
}
ids_of() { jq -r ".prompts[$2].prompt_ids | map(tostring) | join(\",\")" "$1"; }

# Greedy through the sampler, explicitly at temperature 0.
for i in 0 3; do
    run "$tmp/g.json" --prompt-ids "$(ids_of "$fwd" $i)" -n 48 --ignore-eos --temperature 0
    [ "$(jq -c .ids "$tmp/g.json")" = "$(jq -c ".prompts[$i].greedy_ids" "$fwd")" ] &&
        ok "temperature 0 = golden greedy, prompt $i" || bad "temperature 0 ids differ, prompt $i"
done

# Hugging Face's repetition penalty (CTRL rule over prompt + generated tokens).
n=$(jq '.prompts | length' "$gen")
for ((i = 0; i < n; i++)); do
    run "$tmp/r.json" --prompt-ids "$(ids_of "$gen" $i)" -n 24 --ignore-eos --temperature 0 \
        --repetition-penalty 1.3
    want=$(jq -c ".prompts[$i][\"greedy_rep1.3_ids\"]" "$gen")
    got=$(jq -c .ids "$tmp/r.json")
    [ "$got" = "$want" ] && ok "repetition_penalty 1.3 = transformers, prompt $i" ||
        { bad "repetition_penalty 1.3, prompt $i"; echo " got  $got"; echo " want $want"; }
done

# Seeds.
p0=$(ids_of "$fwd" 0)
sample=(--prompt-ids "$p0" -n 16 --ignore-eos --temperature 0.9 --top-k 50 --top-p 0.95
    --min-p 0.01 --presence-penalty 0.5 --frequency-penalty 0.5)
run "$tmp/s1.json" "${sample[@]}" --seed 1234
run "$tmp/s2.json" "${sample[@]}" --seed 1234
run "$tmp/s3.json" "${sample[@]}" --seed 1235
[ "$(jq -c .ids "$tmp/s1.json")" = "$(jq -c .ids "$tmp/s2.json")" ] &&
    [ "$(jq '.ids | length' "$tmp/s1.json")" = 16 ] && ok "same seed, same tokens" ||
    bad "same seed gave different tokens"
[ "$(jq -c .ids "$tmp/s1.json")" != "$(jq -c .ids "$tmp/s3.json")" ] &&
    ok "different seed, different tokens" || bad "different seeds gave the same tokens"

# Stop strings: cut right before the first occurrence, finish_reason stop, stop_reason set.
run "$tmp/t.json" --prompt-ids "$p0" -n 24 --ignore-eos
full=$(jq -r .text "$tmp/t.json")
stop=$(jq -r '.text[12:15]' "$tmp/t.json")
run "$tmp/st.json" --prompt-ids "$p0" -n 24 --ignore-eos --stop "$stop" --stop "never-there"
[ "$(jq -r .text "$tmp/st.json")" = "${full%%"$stop"*}" ] && ok "stop string cuts the text" ||
    bad "stop string: got '$(jq -r .text "$tmp/st.json")', want '${full%%"$stop"*}'"
[ "$(jq -r .finish_reason "$tmp/st.json")" = stop ] &&
    [ "$(jq -r .stop_reason "$tmp/st.json")" = "$stop" ] && ok "stop string finish_reason" ||
    bad "stop string finish/stop_reason: $(jq -c '[.finish_reason, .stop_reason]' "$tmp/st.json")"
run "$tmp/nst.json" --prompt-ids "$p0" -n 24 --ignore-eos --stop "never-there"
[ "$(jq -r .text "$tmp/nst.json")" = "$full" ] && [ "$(jq -r .finish_reason "$tmp/nst.json")" = length ] &&
    ok "unmatched stop string leaves the text whole" || bad "unmatched stop string changed the text"

# Stop token ids, and min_tokens deferring them.
g=$(jq -c ".prompts[0].greedy_ids" "$fwd")
third=$(jq ".prompts[0].greedy_ids[2]" "$fwd")
run "$tmp/sti.json" --prompt-ids "$p0" -n 24 --ignore-eos --stop-token-id "$third"
[ "$(jq -c .ids "$tmp/sti.json")" = "$(jq -c --argjson t "$third" '.[0:index($t)]' <<<"$g")" ] &&
    [ "$(jq -r .finish_reason "$tmp/sti.json")" = stop ] && ok "stop token id ends the output" ||
    bad "stop token id: $(jq -c '[.ids, .finish_reason]' "$tmp/sti.json")"
run "$tmp/mt.json" --prompt-ids "$p0" -n 24 --ignore-eos --stop-token-id "$third" --min-tokens 3
[ "$(jq '.ids | length' "$tmp/mt.json")" -ge 3 ] && [ "$(jq '.ids[2]' "$tmp/mt.json")" != "$third" ] &&
    ok "min_tokens bans the stop token before it" || bad "min_tokens: $(jq -c .ids "$tmp/mt.json")"

# logit_bias -100 bans the greedy first token.
first=$(jq ".prompts[0].greedy_ids[0]" "$fwd")
run "$tmp/lb.json" --prompt-ids "$p0" -n 4 --ignore-eos --logit-bias "$first:-100"
[ "$(jq '.ids[0]' "$tmp/lb.json")" != "$first" ] && ok "logit_bias -100 bans" ||
    bad "logit_bias -100 did not ban $first"

# Out-of-range values are usage errors that name the parameter.
expect_usage() { # param name expected in the message, args...
    local want="$1"
    shift
    "$gptd" generate -m "$model" --prompt-ids "$p0" "$@" >/dev/null 2>"$tmp/err"
    local rc=$?
    [ "$rc" = 2 ] && grep -q -- "$want" "$tmp/err" && ok "usage error: $*" ||
        { bad "usage error for $* (exit $rc)"; cat "$tmp/err"; }
}
expect_usage temperature --temperature 2.5
expect_usage top_p --top-p 0
expect_usage min_p --min-p 1
expect_usage repetition_penalty --repetition-penalty 0
expect_usage presence_penalty --presence-penalty 3
expect_usage logit_bias --logit-bias 99999999:1
expect_usage logit-bias --logit-bias 12
expect_usage min_tokens -n 4 --min-tokens 5
expect_usage seed --seed -1
exit $fail
