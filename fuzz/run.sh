#!/usr/bin/env bash
# run.sh: fuzzes every harness with libFuzzer for a given time each.
#
#   bash fuzz/run.sh [SECONDS_PER_HARNESS=60] [HARNESS...]
#   (or: meson compile -C build fuzz, which runs 60 s each)
#
# Builds build-fuzz/ with clang, -Dfuzzing=true and ASan+UBSan, then runs each harness on a
# working corpus in build-fuzz/corpus/<name>/ seeded from fuzz/corpus/<name>/ (the committed
# seeds are read, never written). A crash or invariant failure leaves its input in
# fuzz/crashers/<name>/: commit it as a regression seed (copy it into fuzz/corpus/<name>/ once
# fixed) and the replay tests will run it forever after. Exit status 1 if any harness failed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(request tokenizer safetensors loaders stream template)

if ! command -v clang >/dev/null; then
    echo "fuzz/run.sh: clang is not installed (apt-get install clang libclang-rt-14-dev)" >&2
    exit 2
fi
if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzzing=true -Dbuildtype=debugoptimized \
        -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=false >/dev/null || exit 1
fi
ninja -C build-fuzz $(printf 'fuzz/fuzz_%s ' "${harnesses[@]}") >/dev/null || exit 1

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
status=0
for h in "${harnesses[@]}"; do
    work="build-fuzz/corpus/$h"
    crashers="fuzz/crashers/$h"
    mkdir -p "$work" "$crashers"
    start=$(date +%s)
    build-fuzz/fuzz/fuzz_$h -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
        -max_len=65536 -artifact_prefix="$crashers/" -print_final_stats=1 \
        "$work" "fuzz/corpus/$h" >"build-fuzz/fuzz-$h.log" 2>&1
    rc=$?
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "build-fuzz/fuzz-$h.log" | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+' "build-fuzz/fuzz-$h.log" | tail -n 1)
    printf '%-12s %4ss  %10s runs  %-10s  %s\n' "$h" "$(($(date +%s) - start))" "${execs:-?}" \
        "${cov:-}" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (see build-fuzz/fuzz-$h.log)")"
    [ $rc -eq 0 ] || status=1
    rmdir "$crashers" 2>/dev/null || true
done
exit $status
