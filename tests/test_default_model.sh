#!/usr/bin/env bash
# test_default_model.sh: the README's run command serves the default model: `gptd serve` with
# no -m starts, answers /health and a completion, and exits 0 on SIGTERM; `gptd generate`
# without -m uses the same model. The default model is trained (kjv-small) and samples at
# temperature 1 with a random seed, so it may end a verse within 8 tokens: the requests ask
# for ignore_eos to make the token count exact.
# Usage: test_default_model.sh path/to/gptd
set -u
gptd="$1"
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; cat "$work/err" 2>/dev/null | tail -5; exit 1; }

"$gptd" generate -p "Hello" -n 4 --ignore-eos --json >"$work/gen" 2>"$work/err" || fail "generate without -m"
jq -e '.ids | length == 4' "$work/gen" >/dev/null || fail "generate output: $(cat "$work/gen")"

"$gptd" serve --port 0 --access-log false >/dev/null 2>"$work/err" &
pid=$!
port=
for _ in $(seq 1 100); do
    port=$(grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' "$work/err" | grep -oE '[0-9]+$' | head -n 1)
    [ -n "$port" ] && curl -s "http://127.0.0.1:$port/health" | grep -q '"ok"' && break
    sleep 0.1
done
[ -n "$port" ] || fail "no port"
grep -q "default model" "$work/err" || fail "the log does not say the default model is served"
status=$(curl -s -o "$work/body" -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" \
    -d '{"prompt":"In the beginning","max_tokens":8,"ignore_eos":true}')
[ "$status" = 200 ] || fail "completion status $status: $(cat "$work/body")"
jq -e '.usage.completion_tokens == 8 and (.choices[0].text | type == "string")' "$work/body" \
    >/dev/null || fail "completion body: $(cat "$work/body")"
kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
[ $rc -eq 0 ] || fail "exit code $rc after SIGTERM"
echo "ok: default model served and generated"
