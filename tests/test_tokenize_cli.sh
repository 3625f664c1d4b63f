#!/usr/bin/env bash
# test_tokenize_cli.sh: `gptd tokenize` and `gptd detokenize` end to end on the real GPT-2
# vocabulary in tests/data: ids, --json, --no-special, stdin, round trip, usage errors
# (exit 2) and runtime failures (exit 1).
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
exit $fail
