#!/usr/bin/env bash
# test_cli.sh: checks the gptd binary's argument handling (help, version, usage errors).
# Usage: test_cli.sh path/to/gptd
set -u
gptd="$1"
fail=0
check() { # name, expected exit code, command...
    local name="$1" want="$2"
    shift 2
    "$@" >/tmp/gptd_cli_out.$$ 2>/tmp/gptd_cli_err.$$
    local got=$?
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: exit $got, want $want"; cat /tmp/gptd_cli_err.$$; fail=1
    else
        echo "ok   $name"
    fi
}
check help 0 "$gptd" --help
grep -q '^usage: gptd' /tmp/gptd_cli_out.$$ || { echo "FAIL help text"; fail=1; }
check version 0 "$gptd" version
grep -Eq '^gptd [0-9]+\.[0-9]+\.[0-9]+ \(.+\)$' /tmp/gptd_cli_out.$$ || { echo "FAIL version text: $(cat /tmp/gptd_cli_out.$$)"; fail=1; }
check unknown-command 2 "$gptd" frobnicate
grep -q "unknown command 'frobnicate'" /tmp/gptd_cli_err.$$ || { echo "FAIL unknown command message"; fail=1; }
check unknown-flag 2 "$gptd" --frobnicate
grep -q "unknown option '--frobnicate'" /tmp/gptd_cli_err.$$ || { echo "FAIL unknown flag message"; fail=1; }
check no-args 2 "$gptd"
check version-extra-arg 2 "$gptd" version --bogus
check serve-bad-weights 2 "$gptd" serve --weights fp16 --port 0
grep -q "expected auto, f32, f16, bf16 or q8" /tmp/gptd_cli_err.$$ || { echo "FAIL --weights message"; fail=1; }
check serve-bad-kv-dtype 2 "$gptd" serve --kv-cache-dtype fp8 --port 0
grep -q "expected f32 or f16" /tmp/gptd_cli_err.$$ || { echo "FAIL --kv-cache-dtype message"; fail=1; }
rm -f /tmp/gptd_cli_out.$$ /tmp/gptd_cli_err.$$
exit $fail
