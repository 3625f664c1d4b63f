#!/usr/bin/env bash
# test_chat_http.sh: POST /v1/chat/completions and /apply-template through real HTTP
# (suite 'integration').
#
# The model is a random-weight Llama (tools/make-random-gpt2 --arch llama) carrying the real
# Llama 3.1 tokenizer and chat template (registry fixture tokenizer-llama3_1), so the prompt
# goes through the template, special-token parsing and the BOS rule exactly as a real chat
# model's would. Checked with curl and jq: the prompt equals `gptd template`'s and has one BOS;
# usage counts it; chat.completion and chat.completion.chunk shapes (role delta first, content
# deltas, a final chunk with finish_reason, the usage chunk, [DONE]); streamed content equals
# non-streamed for a seed; logprobs.content; n; a model end token stops with "stop"; a
# multi-turn conversation; continue_final_message; tools and tool-call arguments and
# chat_template_kwargs through other real templates (--chat-template); the errors: no template,
# a template that raises, empty messages, bad roles, content parts of other types, 1,000
# messages, tool_choice "required", response_format; the server healthy afterwards.
#
# Usage: test_chat_http.sh path/to/gptd path/to/make-random-gpt2
set -u
gptd="$1"
mkmodel="$2"
. "$(dirname "$0")/../common.sh"
tok_json=$(registry_path tokenizer-llama3_1 tokenizer.json) || exit 1
tok_config=$(registry_path tokenizer-llama3_1 tokenizer_config.json) || exit 1
tmp=$(mktemp -d /tmp/gptd-chat-test.XXXXXX)
pids=()
fail=0
n_ok=0
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    wait 2>/dev/null
    [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
ok() { n_ok=$((n_ok + 1)); }
bad() { echo "FAIL $*"; fail=1; }

# The chat model: Llama 3's vocabulary (128,256 ids), tiny layers; the end tokens as the
# Llama 3.1 instruct models' generation_config.json lists them.
model="$tmp/llama3-chat-random"
"$mkmodel" "$model" --arch llama --layers 2 --embd 64 --heads 4 --kv-heads 2 --ffn 128 \
    --ctx 1024 --vocab 128256 --seed 11 >/dev/null || { echo "make-random-gpt2 failed"; exit 1; }
cp "$tok_json" "$tok_config" "$model/"
echo '{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}' \
    >"$model/generation_config.json"

start() { # NAME MODEL ARGS...: starts a server, waits for "ready", sets PORT.
    local name="$1" m="$2"
    shift 2
    "$gptd" serve -m "$m" --host 127.0.0.1 --port 0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=("$!")
    for _ in $(seq 1 200); do
        if grep -q ' ready: ' "$tmp/$name.err" 2>/dev/null; then
            PORT=$(grep ' ready: ' "$tmp/$name.err" | sed -E 's/.*:([0-9]+)$/\1/')
            return 0
        fi
        sleep 0.05
    done
    echo "server $name did not start:"
    cat "$tmp/$name.err"
    exit 1
}

post() { # PATH BODY: sets STATUS, body in $tmp/body
    printf '%s' "$2" >"$tmp/req"
    STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$tmp/req" "http://127.0.0.1:$PORT$1")
}

expect_error() { # NAME STATUS CODE [MESSAGE-SUBSTRING]
    if [ "$STATUS" != "$2" ]; then
        bad "$1: status $STATUS, want $2: $(head -c 300 "$tmp/body")"
        return
    fi
    local code msg
    code=$(jq -r .error.code "$tmp/body")
    msg=$(jq -r .error.message "$tmp/body")
    [ "$code" = "$3" ] || { bad "$1: code $code, want $3 ($msg)"; return; }
    if [ -n "${4:-}" ] && [[ "$msg" != *"$4"* ]]; then
        bad "$1: message '$msg' does not contain '$4'"
        return
    fi
    ok
}

healthy() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] ||
        bad "server unhealthy after $1"
}

# ---- a model without a chat template ----
start gpt2 "$tiny_model"
post /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}]}'
expect_error "no template" 400 no_chat_template \
    "model has no chat template (start with --chat-template FILE)"
post /apply-template '{"messages":[{"role":"user","content":"hi"}]}'
expect_error "no template (apply-template)" 400 no_chat_template
healthy "no template"

# ---- the Llama 3.1 chat model ----
start chat "$model"
grep -q "chat template: $model/tokenizer_config.json" "$tmp/chat.err" || bad "template origin not logged"
msgs='[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi."}]'

# /apply-template == gptd template, one BOS in the tokens, usage counts them.
post /apply-template "{\"messages\":$msgs}"
[ "$STATUS" = 200 ] || bad "apply-template: $STATUS $(cat "$tmp/body")"
prompt=$(jq -r .prompt "$tmp/body")
echo "[{\"messages\":$msgs,\"add_generation_prompt\":true}]" >"$tmp/case.json"
cli=$("$gptd" template -m "$model" --json "$tmp/case.json" | jq -r '.[0].text')
[ "$prompt" = "$cli" ] && ok || bad "apply-template differs from gptd template"
[[ "$prompt" == "<|begin_of_text|><|start_header_id|>system<|end_header_id|>"* ]] ||
    bad "prompt start: ${prompt:0:80}"
# ($(...) drops trailing newlines: checks on the text's end read the JSON itself.)
jq -e '.prompt | endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")' "$tmp/body" >/dev/null ||
    bad "prompt does not end with the assistant header"
jq '{prompt: .prompt, add_special_tokens: false}' "$tmp/body" >"$tmp/tokreq"
n_prompt=$(curl -s -H 'Content-Type: application/json' --data-binary @"$tmp/tokreq" \
    "http://127.0.0.1:$PORT/tokenize" | jq .count)
first=$(curl -s -H 'Content-Type: application/json' --data-binary @"$tmp/tokreq" \
    "http://127.0.0.1:$PORT/tokenize" | jq '.tokens[0:2]|join(",")' -r)
[[ "$first" == 128000,* && "$first" != 128000,128000 ]] && ok || bad "prompt tokens start $first"

post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":8,\"temperature\":0}"
[ "$STATUS" = 200 ] || bad "chat: $STATUS $(cat "$tmp/body")"
shape=$(jq -r '[.object, (.id|startswith("chatcmpl-")), .choices[0].index, .choices[0].message.role,
    (.choices[0].message.content|type), .choices[0].finish_reason, .choices[0].logprobs,
    .usage.completion_tokens, .usage.total_tokens - .usage.prompt_tokens] | map(tostring) | join(" ")' "$tmp/body")
[ "$shape" = "chat.completion true 0 assistant string length null 8 8" ] && ok || bad "chat shape: $shape"
pt=$(jq .usage.prompt_tokens "$tmp/body")
[ "$pt" = "$n_prompt" ] && ok || bad "usage.prompt_tokens $pt, the rendered prompt has $n_prompt tokens"

# Without max_tokens the answer may fill the context: ignore_eos runs it to the end.
post /v1/chat/completions "{\"messages\":$msgs,\"ignore_eos\":true,\"temperature\":0}"
ct=$(jq .usage.completion_tokens "$tmp/body")
[ "$STATUS" = 200 ] && [ "$ct" = $((1024 - n_prompt)) ] && ok ||
    bad "no max_tokens: $STATUS, $ct completion tokens (want $((1024 - n_prompt)))"
# max_completion_tokens wins over max_tokens.
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":9,\"max_completion_tokens\":3}"
[ "$(jq .usage.completion_tokens "$tmp/body")" = 3 ] && ok || bad "max_completion_tokens"

# Streamed == non-streamed for a seed; the chunk sequence.
body="{\"messages\":$msgs,\"max_tokens\":12,\"temperature\":0.9,\"seed\":42"
post /v1/chat/completions "$body}"
want=$(jq -r .choices[0].message.content "$tmp/body")
curl -sN -H 'Content-Type: application/json' \
    -d "$body,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" \
    "http://127.0.0.1:$PORT/v1/chat/completions" >"$tmp/sse"
grep '^data: {' "$tmp/sse" | sed 's/^data: //' >"$tmp/chunks"
[ "$(grep '^data: ' "$tmp/sse" | tail -n 1)" = "data: [DONE]" ] || bad "stream does not end with [DONE]"
got=$(jq -j '.choices[0].delta.content // ""' "$tmp/chunks")
[ "$got" = "$want" ] && ok || bad "streamed content '$got' != non-streamed '$want'"
first=$(head -n 1 "$tmp/chunks" | jq -c '[.object, .choices[0].delta, .choices[0].finish_reason]')
[ "$first" = '["chat.completion.chunk",{"role":"assistant","content":""},null]' ] && ok ||
    bad "first chunk: $first"
last_choice=$(jq -c 'select(.choices|length>0) | [.choices[0].delta, .choices[0].finish_reason]' "$tmp/chunks" | tail -n 1)
[ "$last_choice" = '[{},"length"]' ] && ok || bad "final chunk: $last_choice"
usage=$(tail -n 1 "$tmp/chunks" | jq -c '[.choices, .usage.completion_tokens]')
[ "$usage" = '[[],12]' ] && ok || bad "usage chunk: $usage"
n_ids=$(jq -r .id "$tmp/chunks" | sort -u | wc -l)
[ "$n_ids" = 1 ] || bad "chunks carry $n_ids ids"

# logprobs with top_logprobs.
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":5,\"logprobs\":true,\"top_logprobs\":3}"
lp=$(jq -c '[(.choices[0].logprobs.content|length), (.choices[0].logprobs.content|map(.top_logprobs|length)|unique),
    (.choices[0].logprobs.content|map((.token|type), (.logprob|type), (.bytes|type))|unique)]' "$tmp/body")
[ "$lp" = '[5,[3],["array","number","string"]]' ] && ok || bad "logprobs: $lp"
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":3,\"top_logprobs\":2}"
expect_error "top_logprobs without logprobs" 400 invalid_value

# n choices.
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":4,\"n\":3,\"temperature\":1,\"seed\":3}"
[ "$(jq -c '[.choices[].index]' "$tmp/body")" = '[0,1,2]' ] && ok || bad "n=3: $(head -c 300 "$tmp/body")"

# A model end token (<|eot_id|>, from generation_config.json) ends the answer with "stop".
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":8,\"logit_bias\":{\"128009\":100}}"
r=$(jq -c '[.choices[0].finish_reason, .choices[0].message.content, .usage.completion_tokens]' "$tmp/body")
[ "$r" = '["stop","",1]' ] && ok || bad "end token: $r"

# Special tokens other than the end tokens are left out of chat text (vLLM's
# skip_special_tokens, default true for chat); their ids and logprobs stay.
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":3,\"logit_bias\":{\"128006\":100},\"logprobs\":true}"
r=$(jq -c '[.choices[0].message.content, .usage.completion_tokens, (.choices[0].logprobs.content|map(.token))]' "$tmp/body")
[ "$r" = '["",3,["<|start_header_id|>","<|start_header_id|>","<|start_header_id|>"]]' ] && ok ||
    bad "special tokens skipped: $r"
post /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":2,\"logit_bias\":{\"128006\":100},\"skip_special_tokens\":false}"
r=$(jq -c '.choices[0].message.content' "$tmp/body")
[ "$r" = '"<|start_header_id|><|start_header_id|>"' ] && ok || bad "skip_special_tokens false: $r"

# Multi-turn.
turns='[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":"How are you?"}]'
post /apply-template "{\"messages\":$turns}"
p=$(jq -r .prompt "$tmp/body")
[[ "$p" == *"assistant<|end_header_id|>"$'\n\n'"Hello!<|eot_id|>"* && "$p" == *"How are you?<|eot_id|>"* ]] &&
    ok || bad "multi-turn prompt: $p"
post /v1/chat/completions "{\"messages\":$turns,\"max_tokens\":4}"
[ "$STATUS" = 200 ] && ok || bad "multi-turn: $STATUS"
# Content as a list of text parts (joined with a newline for this string template).
post /apply-template '{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}'
[[ "$(jq -r .prompt "$tmp/body")" == *"<|end_header_id|>"$'\n\n'"a"$'\n'"b<|eot_id|>"* ]] && ok ||
    bad "text parts: $(cat "$tmp/body")"
# continue_final_message: the text ends inside the assistant turn.
post /apply-template '{"messages":[{"role":"user","content":"Tell a story"},{"role":"assistant","content":"Once upon"}],"add_generation_prompt":false,"continue_final_message":true}'
[[ "$(jq -r .prompt "$tmp/body")" == *"<|end_header_id|>"$'\n\n'"Once upon" ]] && ok ||
    bad "continue_final_message: $(cat "$tmp/body")"
post /apply-template '{"messages":[{"role":"user","content":"x"}],"continue_final_message":true}'
expect_error "continue_final_message with add_generation_prompt" 400 invalid_value

# Prefix cache: a conversation's second request reuses the first one's whole KV blocks (all
# but the last prompt token), reported as cached_tokens, with the same greedy answer.
conv='[{"role":"system","content":"You answer in exactly one short sentence, politely."},{"role":"user","content":"What is the capital of Norway, and why is it cold there?"}]'
post /v1/chat/completions "{\"messages\":$conv,\"max_tokens\":6,\"temperature\":0}"
first=$(jq -c '[.choices[0].message.content, .usage.prompt_tokens, .usage.prompt_tokens_details.cached_tokens]' "$tmp/body")
post /v1/chat/completions "{\"messages\":$conv,\"max_tokens\":6,\"temperature\":0}"
second=$(jq -c '[.choices[0].message.content, .usage.prompt_tokens, .usage.prompt_tokens_details.cached_tokens]' "$tmp/body")
pt=$(jq '.[1]' <<<"$first")
want_cached=$(( (pt - 1) / 16 * 16 ))
[ "$(jq '.[2]' <<<"$first")" = 0 ] && [ "$(jq '.[2]' <<<"$second")" = "$want_cached" ] &&
    [ "$(jq '.[0]' <<<"$first")" = "$(jq '.[0]' <<<"$second")" ] && [ "$want_cached" -gt 0 ] && ok ||
    bad "prefix cache: first $first, second $second (want $want_cached cached)"
hits=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "gptd_prefix_cache_hit_tokens_total" {print $2}')
[ -n "$hits" ] && [ "${hits%.*}" -ge "$want_cached" ] && ok || bad "gptd_prefix_cache_hit_tokens_total: '$hits'"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -q '^gptd_prefix_cache_queries_total ' && ok ||
    bad "no gptd_prefix_cache_queries_total"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -q '^gptd_kv_blocks_cached ' && ok || bad "no gptd_kv_blocks_cached"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -q '^gptd_engine_phase_seconds_total{phase="forward"} ' && ok ||
    bad "no gptd_engine_phase_seconds_total"
grep -q "\"cached_tokens\":$want_cached" "$tmp/chat.out" && ok || bad "the access log has no cached_tokens"

# Errors.
post /v1/chat/completions '{"messages":[]}'
expect_error "empty messages" 400 invalid_value
post /v1/chat/completions '{"model":"x"}'
expect_error "no messages" 400 missing_parameter
post /v1/chat/completions '{"messages":[{"role":"wizard","content":"hi"}]}'
expect_error "bad role" 400 invalid_value "role"
post /v1/chat/completions '{"messages":[{"role":"user"}]}'
expect_error "no content" 400 missing_parameter
post /v1/chat/completions '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}'
expect_error "image part" 400 unsupported_content_type '"image_url"'
post /v1/chat/completions '{"messages":[{"role":"user","content":[{"type":"holo","x":1}]}]}'
expect_error "unknown part" 400 unsupported_content_type "unknown type"
post /v1/chat/completions '{"messages":[{"role":"user","content":42}]}'
expect_error "numeric content" 400 invalid_type
post /v1/chat/completions "{\"messages\":$msgs,\"tool_choice\":\"required\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}"
expect_error "tool_choice required" 400 unsupported_parameter
post /v1/chat/completions "{\"messages\":$msgs,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}"
expect_error "named tool_choice" 400 unsupported_parameter
post /v1/chat/completions "{\"messages\":$msgs,\"response_format\":{\"type\":\"json_object\"}}"
expect_error "response_format json" 400 unsupported_parameter
post /v1/chat/completions "{\"messages\":$msgs,\"response_format\":{\"type\":\"text\"},\"tool_choice\":\"none\",\"max_tokens\":2}"
[ "$STATUS" = 200 ] && ok || bad "response_format text + tool_choice none: $STATUS"
post /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[1]}'
expect_error "chat_template_kwargs not an object" 400 invalid_type
post /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"messages":[]}}'
expect_error "chat_template_kwargs setting messages" 400 invalid_value
# Bytes cJSON lets through but JSON does not allow (a raw tab inside a string): 400, not 500.
printf '{"messages":[{"role":"user","content":"a\tb"}]}' >"$tmp/req"
STATUS=$(curl -s -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$tmp/req" "http://127.0.0.1:$PORT/v1/chat/completions")
expect_error "raw tab in a string" 400 invalid_json
# 1,000 messages: rendered fine, too long for the 1,024-token context.
many=$(jq -nc '[range(1000) | {role: (if . % 2 == 0 then "user" else "assistant" end), content: "message \(.)"}]')
post /apply-template "{\"messages\":$many}"
[ "$STATUS" = 200 ] && [ "$(jq -r .prompt "$tmp/body" | grep -o 'message [0-9]*' | wc -l)" = 1000 ] &&
    ok || bad "1,000 messages (apply-template): $STATUS"
post /v1/chat/completions "{\"messages\":$many,\"max_tokens\":4}"
expect_error "1,000 messages" 400 context_length_exceeded
healthy "the error cases"

# ---- the prefix cache off: nothing cached, the same answer ----
start nocache "$model" --prefix-cache off
post /v1/chat/completions "{\"messages\":$conv,\"max_tokens\":6,\"temperature\":0}"
post /v1/chat/completions "{\"messages\":$conv,\"max_tokens\":6,\"temperature\":0}"
r=$(jq -c '[.choices[0].message.content, .usage.prompt_tokens_details.cached_tokens]' "$tmp/body")
[ "$r" = "[$(jq '.[0]' <<<"$first"),0]" ] && ok || bad "--prefix-cache off: $r (cached run: $first)"

# ---- other real templates through --chat-template ----
start gemma "$model" --chat-template "$testdata_dir/chat/gemma3/template.jinja"
post /v1/chat/completions '{"messages":[{"role":"assistant","content":"I start"},{"role":"user","content":"x"}]}'
expect_error "template raises" 400 chat_template_error \
    "Conversation roles must alternate user/assistant/user/assistant/..."
post /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
[ "$STATUS" = 200 ] && ok || bad "gemma template: $STATUS $(cat "$tmp/body")"
healthy "a raising template"

start qwen "$model" --chat-template "$testdata_dir/chat/qwen2_5/template.jinja"
tools='[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]'
post /apply-template "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\", \\\"days\\\": 1.0}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"sunny\"}],\"tools\":$tools}"
p=$(jq -r .prompt "$tmp/body")
[[ "$p" == *'<tools>'$'\n''{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}'$'\n''</tools>'* ]] &&
    ok || bad "tools in the prompt: $p"
[[ "$p" == *'{"name": "get_weather", "arguments": {"city": "Paris", "days": 1.0}}'* ]] && ok ||
    bad "tool-call arguments as an object: $p"
[[ "$p" == *'<tool_response>'$'\n''sunny'$'\n''</tool_response>'* ]] && ok || bad "tool message: $p"
post /apply-template '{"messages":[{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":"{not json"}}]}]}'
expect_error "tool-call arguments not JSON" 400 invalid_value "arguments"
# Empty arguments are {}; OpenAI's content null on a tool-calling turn is "" for the template.
post /apply-template '{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":""}}]}],"add_generation_prompt":false}'
jq -e '.prompt | endswith("<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n")' "$tmp/body" >/dev/null &&
    ok || bad "null content and empty arguments: $(cat "$tmp/body")"

start qwen3 "$model" --chat-template "$testdata_dir/chat/qwen3/template.jinja"
post /apply-template '{"messages":[{"role":"user","content":"hi"}],"chat_template_kwargs":{"enable_thinking":false}}'
jq -e '.prompt | endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")' "$tmp/body" >/dev/null &&
    ok || bad "chat_template_kwargs enable_thinking: $(cat "$tmp/body")"
post /apply-template '{"messages":[{"role":"user","content":"hi"}]}'
jq -e '.prompt | endswith("<|im_start|>assistant\n")' "$tmp/body" >/dev/null && ok ||
    bad "qwen3 default: $(cat "$tmp/body")"
# A tool-calling history as OpenAI clients send it (content null): Qwen3's template tests
# '</think>' in the content, which would fail on None.
post /v1/chat/completions '{"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{\"city\": \"Oslo\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"cold"}],"max_tokens":2}'
[ "$STATUS" = 200 ] && ok || bad "qwen3 tool history: $STATUS $(cat "$tmp/body")"

[ "$fail" -eq 0 ] && echo "chat http: $n_ok checks passed"
exit "$fail"
