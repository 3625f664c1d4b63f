# tests/common.sh: where the shell and Python-launched tests find their fixtures (sourced).
#
# Committed fixtures are in tests/data/ (meson exports GPTD_TESTDATA_DIR; without meson the
# folder beside this file is used). Registry fixtures are in the cache tools/fetch-testdata
# fills; registry_path FIXTURE FILE prints a file's path there, or fails naming that command.

testdata_dir=${GPTD_TESTDATA_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/data}
tiny_model=$testdata_dir/gpt2-tiny-random

registry_cache_dir() {
    if [ -n "${GPTD_TESTDATA_CACHE:-}" ]; then
        printf '%s\n' "$GPTD_TESTDATA_CACHE"
    else
        printf '%s/gptd/testdata\n' "${XDG_CACHE_HOME:-$HOME/.cache}"
    fi
}

registry_path() { # FIXTURE FILE
    local p
    p="$(registry_cache_dir)/$1/$2"
    if [ ! -f "$p" ]; then
        echo "missing test data $1/$2 (looked in $(registry_cache_dir)): run tools/fetch-testdata $1" >&2
        return 1
    fi
    printf '%s\n' "$p"
}
