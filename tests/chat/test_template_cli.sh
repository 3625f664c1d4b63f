#!/usr/bin/env bash
# test_template_cli.sh: `gptd template` against the chat-template goldens (suite 'cli').
#
# For every family in tests/data/chat/ the command renders the family's visible.json (cases made
# by Python's jinja2 as transformers configures it, see tests/data/chat/PROVENANCE.md) with
# --chat-template and must print, case for case, the expected text or the template's error
# message. Then the command's own rules: -m DIR finds the template in tokenizer_config.json
# (a string, or the "default" of a named list) or chat_template.jinja, and takes bos_token /
# eos_token from the config; a model without a template, a template that does not compile and
# input that is not an array of cases fail with exit 1 and a message; usage errors exit 2.
#
# Usage: test_template_cli.sh path/to/gptd
set -u
gptd="$1"
. "$(dirname "$0")/../common.sh"
tmp=$(mktemp -d /tmp/gptd-template-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL $*"; fail=1; }

n_families=0
for dir in "$testdata_dir"/chat/*/; do
    family=$(basename "$dir")
    [ -f "$dir/visible.json" ] || continue
    n_families=$((n_families + 1))
    if ! "$gptd" template --chat-template "$dir/template.jinja" --json "$dir/visible.json" \
        >"$tmp/$family.out" 2>"$tmp/$family.err"; then
        bad "$family: exit $? ($(head -c 300 "$tmp/$family.err"))"
        continue
    fi
    /usr/bin/python3 - "$dir/visible.json" "$tmp/$family.out" "$family" <<'PY' || fail=1
import json, sys
cases = json.load(open(sys.argv[1], encoding="utf-8"))
got = json.load(open(sys.argv[2], encoding="utf-8"))
family = sys.argv[3]
bad = 0
if len(got) != len(cases):
    print(f"FAIL {family}: {len(got)} results for {len(cases)} cases")
    sys.exit(1)
for case, out in zip(cases, got):
    want = case["expected"]
    want = {"error": want["error"]} if isinstance(want, dict) else {"text": want}
    if out != want:
        bad += 1
        print(f"FAIL {family}/{case['id']}: got {json.dumps(out)[:300]} want {json.dumps(want)[:300]}")
print(f"{family}: {len(cases) - bad}/{len(cases)} cases byte-equal")
sys.exit(1 if bad else 0)
PY
done
[ "$n_families" -ge 7 ] || bad "only $n_families families of chat goldens found in $testdata_dir/chat"

# -m DIR: the template from tokenizer_config.json, bos_token/eos_token from it.
model="$tmp/model"
mkdir -p "$model"
cat >"$model/tokenizer_config.json" <<'J'
{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
 "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}"}
J
echo '[{"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": true},
       {"messages": [{"role": "user", "content": "hi"}], "extra": {"eos_token": "<E>"}}]' >"$tmp/cases.json"
out=$("$gptd" template -m "$model" --json "$tmp/cases.json" | jq -c .)
want='[{"text":"<s>[user]hi[assistant]</s>"},{"text":"<s>[user]hi<E>"}]'
[ "$out" = "$want" ] || bad "tokenizer_config.json template: $out"
# stdin, with "-" or without
out=$("$gptd" template -m "$model" - <"$tmp/cases.json" | jq -c .)
[ "$out" = "$want" ] || bad "stdin (-): $out"
out=$("$gptd" template -m "$model" <"$tmp/cases.json" | jq -c .)
[ "$out" = "$want" ] || bad "stdin: $out"

# A list of named templates: "default" is used.
cat >"$model/tokenizer_config.json" <<'J'
{"chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT{{ messages|length }}"}]}
J
out=$("$gptd" template -m "$model" --json "$tmp/cases.json" | jq -c .)
[ "$out" = '[{"text":"DEFAULT1"},{"text":"DEFAULT1"}]' ] || bad "named templates: $out"

# No chat_template in the config: chat_template.jinja beside it.
echo '{"eos_token": "</s>"}' >"$model/tokenizer_config.json"
printf 'FILE{{ eos_token }}\n' >"$model/chat_template.jinja"
out=$("$gptd" template -m "$model" --json "$tmp/cases.json" | jq -c .)
[ "$out" = '[{"text":"FILE</s>"},{"text":"FILE<E>"}]' ] || bad "chat_template.jinja: $out"
# --chat-template wins over both.
printf 'FLAG' >"$tmp/flag.jinja"
out=$("$gptd" template -m "$model" --chat-template "$tmp/flag.jinja" --json "$tmp/cases.json" | jq -c .)
[ "$out" = '[{"text":"FLAG"},{"text":"FLAG"}]' ] || bad "--chat-template: $out"

# No template at all: exit 1 naming the flag.
rm "$model/chat_template.jinja"
if "$gptd" template -m "$model" --json "$tmp/cases.json" >/dev/null 2>"$tmp/err"; then
    bad "a model without a template succeeded"
fi
grep -q 'model has no chat template (start with --chat-template FILE)' "$tmp/err" ||
    bad "no-template message: $(cat "$tmp/err")"
# The bundled GPT-2 test model has none either.
"$gptd" template -m "$tiny_model" --json "$tmp/cases.json" >/dev/null 2>&1 && bad "gpt2 has a template?"

# A template that does not compile: exit 1 with its line and column.
printf 'line one\n{%% if x %%}\n{%% endfor %%}\n' >"$tmp/broken.jinja"
if "$gptd" template --chat-template "$tmp/broken.jinja" --json "$tmp/cases.json" >/dev/null 2>"$tmp/err"; then
    bad "a broken template compiled"
fi
grep -q 'line 3' "$tmp/err" || bad "broken template message without its line: $(cat "$tmp/err")"

# Bad input: not JSON, not an array; a bad case is an entry, not a failure.
echo '{"messages": []}' >"$tmp/obj.json"
"$gptd" template --chat-template "$tmp/flag.jinja" --json "$tmp/obj.json" >/dev/null 2>&1 &&
    bad "an object instead of an array was accepted"
echo '[1, {"messages": 3}]' >"$tmp/badcases.json"
out=$("$gptd" template --chat-template "$tmp/flag.jinja" --json "$tmp/badcases.json" | jq -c '[.[] | has("error")]')
[ "$out" = '[true,true]' ] || bad "bad cases: $out"
"$gptd" template --json "$tmp/cases.json" >/dev/null 2>&1
[ $? -eq 2 ] || bad "no -m and no --chat-template is not a usage error"
"$gptd" template --bogus >/dev/null 2>&1
[ $? -eq 2 ] || bad "an unknown flag is not a usage error"

[ "$fail" -eq 0 ] && echo "template cli: all checks passed"
exit "$fail"
