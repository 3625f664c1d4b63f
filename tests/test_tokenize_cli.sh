#!/usr/bin/env bash
# test_tokenize_cli.sh: `gptd tokenize` and `gptd detokenize` end to end on the real GPT-2
# vocabulary in tests/data: ids, --json, --no-special, stdin, round trip, usage errors
# (exit 2) and runtime failures (exit 1); then on a folder holding only Mistral's tokenizer
# files (registry fixture tokenizer-mistral): BOS added by default, --no-add-special, --jsonl,
# detokenize --skip-special.
# Usage: test_tokenize_cli.sh path/to/gptd
set -u
gptd="$1"
. "$(dirname "$0")/common.sh"
model=$tiny_model
tmp=$(mktemp -d /tmp/gptd_tokcli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, expected exit code, command...
    local name="$1" want="$2"
    shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: exit $got, want $want"; cat "$tmp/err"; fail=1
    else
        echo "ok   $name"
    fi
}
expect_out() { # name, expected stdout
    if [ "$(cat "$tmp/out")" != "$2" ]; then
        echo "FAIL $1: got '$(cat "$tmp/out")', want '$2'"; fail=1
    fi
}

printf 'Hello, my name is' >"$tmp/hello.txt"
check tokenize 0 "$gptd" tokenize -m "$model" "$tmp/hello.txt"
expect_out tokenize "15496 11 616 1438 318"
check tokenize-json 0 "$gptd" tokenize --json -m "$model" "$tmp/hello.txt"
expect_out tokenize-json "[15496, 11, 616, 1438, 318]"

printf 'a<|endoftext|>' >"$tmp/eot.txt"
check tokenize-special 0 "$gptd" tokenize -m "$model" "$tmp/eot.txt"
expect_out tokenize-special "64 50256"
check tokenize-no-special 0 "$gptd" tokenize -m "$model" --no-special "$tmp/eot.txt"
expect_out tokenize-no-special "64 27 91 437 1659 5239 91 29"

printf 'Once upon a time' | "$gptd" tokenize -m "$model" - >"$tmp/out" 2>"$tmp/err" ||
    { echo "FAIL tokenize-stdin: exit $?"; fail=1; }
expect_out tokenize-stdin "7454 2402 257 640"

printf '\xf0\x9f\xa6\x99 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac<|endoftext|>\n' >"$tmp/mixed.txt"
"$gptd" tokenize --json -m "$model" "$tmp/mixed.txt" >"$tmp/ids.json" 2>"$tmp/err"
check detokenize-round-trip 0 "$gptd" detokenize -m "$model" "$tmp/ids.json"
cmp -s "$tmp/out" "$tmp/mixed.txt" || { echo "FAIL detokenize-round-trip: text differs"; fail=1; }
echo '[8582, 99]' | "$gptd" detokenize -m "$model" >"$tmp/out" 2>"$tmp/err"
[ "$(od -An -tx1 "$tmp/out" | tr -d ' \n')" = "efbfbd" ] ||
    { echo "FAIL detokenize-incomplete: want U+FFFD"; fail=1; }

check tokenize-help 0 "$gptd" tokenize --help
grep -q '^usage: gptd tokenize' "$tmp/out" || { echo "FAIL tokenize-help text"; fail=1; }
check tokenize-no-model 2 "$gptd" tokenize "$tmp/hello.txt"
grep -q -- '-m MODEL_DIR is required' "$tmp/err" || { echo "FAIL no-model message"; fail=1; }
check tokenize-m-without-value 2 "$gptd" tokenize -m
check tokenize-unknown-flag 2 "$gptd" tokenize -m "$model" --frobnicate
grep -q "unknown option '--frobnicate'" "$tmp/err" || { echo "FAIL unknown-flag message"; fail=1; }
check tokenize-two-files 2 "$gptd" tokenize -m "$model" "$tmp/hello.txt" "$tmp/eot.txt"
check detokenize-json-flag 2 "$gptd" detokenize -m "$model" --json "$tmp/ids.json"
check detokenize-no-model 2 "$gptd" detokenize "$tmp/ids.json"

check tokenize-bad-model-dir 1 "$gptd" tokenize -m "$tmp/nowhere" "$tmp/hello.txt"
grep -q 'neither tokenizer.json nor vocab.json' "$tmp/err" || { echo "FAIL bad-dir message"; fail=1; }
check tokenize-missing-file 1 "$gptd" tokenize -m "$model" "$tmp/absent.txt"
printf 'bad \xff byte' >"$tmp/bad.txt"
check tokenize-invalid-utf8 1 "$gptd" tokenize -m "$model" "$tmp/bad.txt"
grep -q 'UTF-8' "$tmp/err" || { echo "FAIL invalid-utf8 message"; fail=1; }
echo '[1, 2' >"$tmp/bad.json"
check detokenize-bad-json 1 "$gptd" detokenize -m "$model" "$tmp/bad.json"
echo '[1, 50257]' >"$tmp/bad.json"
check detokenize-bad-id 1 "$gptd" detokenize -m "$model" "$tmp/bad.json"
grep -q 'element 1' "$tmp/err" || { echo "FAIL bad-id message"; fail=1; }
# A SentencePiece-style tokenizer in a folder with nothing else: no config.json, no weights.
mistral_json=$(registry_path tokenizer-mistral tokenizer.json) || exit 1
mistral_config=$(registry_path tokenizer-mistral tokenizer_config.json) || exit 1
mkdir "$tmp/mistral"
cp "$mistral_json" "$mistral_config" "$tmp/mistral/"
printf 'Hello world' >"$tmp/hw.txt"
check tokenize-adds-bos 0 "$gptd" tokenize -m "$tmp/mistral" --json "$tmp/hw.txt"
expect_out tokenize-adds-bos "[1, 22557, 1526]"
check tokenize-no-add-special 0 "$gptd" tokenize -m "$tmp/mistral" --no-add-special "$tmp/hw.txt"
expect_out tokenize-no-add-special "22557 1526"
printf 'a<s>b' >"$tmp/s.txt"
check tokenize-special-in-text 0 "$gptd" tokenize -m "$tmp/mistral" "$tmp/s.txt"
expect_out tokenize-special-in-text "1 264 1 287"
check tokenize-special-as-text 0 "$gptd" tokenize -m "$tmp/mistral" --no-special "$tmp/s.txt"
grep -qw 1 <<<"$(cut -d' ' -f2- "$tmp/out")" && { echo "FAIL special-as-text: $(cat "$tmp/out")"; fail=1; }
# --jsonl: one JSON string per line (escapes, NUL, an empty string), one array per line.
printf '%s\n' '"Hello world"' '""' '"x\u0000y \ud83e\udd99"' '"a<s>b"' >"$tmp/lines.jsonl"
check tokenize-jsonl 0 "$gptd" tokenize -m "$tmp/mistral" --jsonl "$tmp/lines.jsonl"
[ "$(wc -l <"$tmp/out")" = 4 ] || { echo "FAIL tokenize-jsonl: $(wc -l <"$tmp/out") lines"; fail=1; }
if ! { [ "$(sed -n 1p "$tmp/out")" = "[1, 22557, 1526]" ] && [ "$(sed -n 2p "$tmp/out")" = "[1]" ] &&
    [ "$(sed -n 4p "$tmp/out")" = "[1, 264, 1, 287]" ]; }; then
    echo "FAIL tokenize-jsonl: $(cat "$tmp/out")"; fail=1
fi
# Line 3 is the same text as one whole input holding those bytes.
printf 'x\0y \xf0\x9f\xa6\x99' >"$tmp/nul.txt"
want=$("$gptd" tokenize -m "$tmp/mistral" --json "$tmp/nul.txt")
[ "$(sed -n 3p "$tmp/out")" = "$want" ] || { echo "FAIL tokenize-jsonl NUL: $(sed -n 3p "$tmp/out") vs $want"; fail=1; }
printf '"ok"\nnot json\n' >"$tmp/bad.jsonl"
check tokenize-jsonl-bad-line 1 "$gptd" tokenize -m "$tmp/mistral" --jsonl "$tmp/bad.jsonl"
grep -q 'line 2 is not one JSON string' "$tmp/err" || { echo "FAIL jsonl bad-line message"; fail=1; }
# Decoding: the leading space of "▁Hello" is stripped at the start; --skip-special drops <s>.
echo '[1, 22557, 1526]' >"$tmp/ids.json"
check detokenize-bos 0 "$gptd" detokenize -m "$tmp/mistral" "$tmp/ids.json"
expect_out detokenize-bos "<s> Hello world"
check detokenize-skip-special 0 "$gptd" detokenize -m "$tmp/mistral" --skip-special "$tmp/ids.json"
expect_out detokenize-skip-special "Hello world"
exit $fail
