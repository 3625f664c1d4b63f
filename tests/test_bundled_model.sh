#!/usr/bin/env bash
# test_bundled_model.sh: the committed model (models/kjv-small) is what gptd serves by default,
# and gptd runs it exactly as the trainer does.
#
#   test_bundled_model.sh GPTD_BINARY
#
# - it fits the 16 MB budget and `gptd generate` without -m loads it;
# - greedy continuations of the fixed prompts equal PyTorch's on the exported weights
#   (models/kjv-small/expected.json, written by tools/train/reference.py at training time);
# - the tokenizer round-trips the whole King James Bible (from Debian's bible-kjv) and text
#   outside it (accents, CJK, emoji, tabs, runs of spaces), and its ids equal those of the BPE
#   encoder the model was trained with (tools/train/bpe.py).
set -euo pipefail
gptd=$(realpath "$1")
src=${GPTD_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
model=$src/models/kjv-small
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { printf 'ok   %s\n' "$1"; }
bad() { printf 'FAIL %s\n' "$1"; fails=$((fails + 1)); }
expect() { if eval "$1"; then ok "$2"; else bad "$2"; fi; }

bytes=$(cat "$model"/config.json "$model"/model.safetensors "$model"/tokenizer.json | wc -c)
expect '[ "$bytes" -le $((16 * 1024 * 1024)) ]' "the model files take $bytes bytes (<= 16 MiB)"

# Greedy continuations against PyTorch.
n=$(jq -r .new_tokens "$model/expected.json")
count=$(jq '.prompts | length' "$model/expected.json")
for i in $(seq 0 $((count - 1))); do
    prompt=$(jq -r ".prompts[$i].prompt" "$model/expected.json")
    if ! "$gptd" generate -p "$prompt" -n "$n" --ignore-eos --json >"$tmp/g.json" 2>"$tmp/err"; then
        bad "generate '$prompt' without -m: $(tail -2 "$tmp/err")"
        continue
    fi
    expect 'grep -q "models/kjv-small" "$tmp/err"' "without -m, gptd loads models/kjv-small"
    expect '[ "$(jq -c .prompt_ids "$tmp/g.json")" = "$(jq -c ".prompts[$i].prompt_ids" "$model/expected.json")" ]' \
        "'$prompt': prompt ids equal the trainer's encoder"
    expect '[ "$(jq -c .ids "$tmp/g.json")" = "$(jq -c ".prompts[$i].greedy_ids" "$model/expected.json")" ]' \
        "'$prompt': $n greedy ids equal PyTorch's"
    expect '[ "$(jq -r .text "$tmp/g.json")" = "$(jq -r ".prompts[$i].greedy_text" "$model/expected.json")" ]' \
        "'$prompt' -> '$(jq -r .text "$tmp/g.json" | head -c 60 | tr '\n' ' ')...'"
done

# Tokenizer: round trip and agreement with the training encoder.
bible "Ge1:1-Re22:21" >"$tmp/kjv.txt"
printf 'Caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82\n\tTab\t  spaces   end  \n\n123,456.78 LORD\x27s it\x27ll\r\n' >"$tmp/odd.txt"
for f in kjv odd; do
    "$gptd" tokenize -m "$model" --json "$tmp/$f.txt" >"$tmp/$f.ids" 2>"$tmp/err" || bad "tokenize $f: $(tail -1 "$tmp/err")"
    "$gptd" detokenize -m "$model" "$tmp/$f.ids" >"$tmp/$f.back" 2>"$tmp/err" || bad "detokenize $f"
    expect 'cmp -s "$tmp/$f.txt" "$tmp/$f.back"' \
        "$f: detokenize(tokenize(text)) is the text ($(wc -c <"$tmp/$f.txt") bytes, $(jq length "$tmp/$f.ids") tokens)"
    /usr/bin/python3 "$src/tools/train/reference.py" "$model" encode "$tmp/$f.txt" >"$tmp/$f.ref"
    expect '[ "$(jq -r ".[]" "$tmp/$f.ids" | sha256sum)" = "$(sha256sum <"$tmp/$f.ref")" ]' \
        "$f: gptd's ids equal the training encoder's"
done

[ "$fails" = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
