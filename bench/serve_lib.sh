# serve_lib.sh: starts `gptd serve` for the bench scripts (sourced by bench/chat.sh,
# bench/turns.sh and bench/step.sh).
#
#   bench_gpt2_model                 makes sure build/gpt2-124m-random exists (the 124M-shaped
#                                    random GPT-2, fixed seed, with GPT-2's tokenizer) and sets
#                                    model to it
#   bench_serve LOG_PREFIX ARGS...   starts build/gptd serve ARGS... --port 0 --access-log false,
#                                    waits for "ready", sets bench_pid and bench_port; the
#                                    server's output goes to LOG_PREFIX.out / LOG_PREFIX.err
#   bench_stop                       ends that server
bench_gpt2_model() {
    model=build/gpt2-124m-random
    if [ ! -f "$model/model.safetensors" ]; then
        build/tools/make-random-gpt2 "$model" >/dev/null
    fi
    [ -f "$model/tokenizer.json" ] || cp tests/data/gpt2-tiny-random/tokenizer.json "$model/"
}

bench_serve() {
    local log="$1"
    shift
    build/gptd serve "$@" --port 0 --access-log false >"$log.out" 2>"$log.err" &
    bench_pid=$!
    trap 'kill $bench_pid 2>/dev/null || true' EXIT
    bench_port=
    for _ in $(seq 1 600); do
        bench_port=$(grep ' ready: ' "$log.err" 2>/dev/null | sed -E 's/.*:([0-9]+)$/\1/' || true)
        [ -n "$bench_port" ] && return 0
        kill -0 "$bench_pid" 2>/dev/null || break
        sleep 0.2
    done
    echo "gptd serve did not become ready:" >&2
    cat "$log.err" >&2
    return 1
}

bench_stop() {
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    trap - EXIT
}
