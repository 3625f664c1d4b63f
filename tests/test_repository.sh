#!/usr/bin/env bash
# tests/test_repository.sh: the checkout stands alone and its test data is what it says it is.
#
#   test_repository.sh [SOURCE_DIR]     (default: the checkout this script is in)
#
# 1. No tracked file but .git* names the team's reference folder beside the checkout or the
#    variable that used to point at it: a clone must run, build and test with nothing beside it.
#    (The two strings are assembled below so that this file does not match itself.)
# 2. No tracked file is larger than 16 MB.
# 3. Every fixture folder under tests/data/ (or under a group folder such as tests/data/tokenizers/)
#    has a PROVENANCE.md whose sha256 table lists every file of the folder, and each file's
#    sha256 is the one listed.
# 4. tests/data/registry.json (tools/fetch-testdata's manifest) parses, and each fixture names a
#    package, a version, a tarball sha256 and files with their sha256.
set -u
src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$src" || exit 1
fails=0
bad() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "FAIL $src is not a git checkout (this test lists tracked files)"
    exit 1
fi

# 1. References outside the checkout.
dots=..
var=GPTD_SHA
var=${var}RED_DIR
hits=$(git grep -n -I -F -e "$dots/shared" -e "$var" -- . ':(exclude).git*' || true)
if [ -n "$hits" ]; then
    bad "tracked files refer outside the checkout:"
    printf '%s\n' "$hits" | head -n 40
else
    echo "ok   no tracked file refers outside the checkout"
fi

# 2. Size.
big=$(git ls-files -z | xargs -0 -r stat -c '%s %n' 2>/dev/null | awk '$1 > 16 * 1024 * 1024')
if [ -n "$big" ]; then
    bad "tracked files over 16 MB: $big"
else
    echo "ok   no tracked file over 16 MB"
fi

# 3. Fixtures and their PROVENANCE.md. A folder with a README.md and no PROVENANCE.md groups
#    fixtures (tests/data/tokenizers/): each of its subfolders is one, and the group itself holds
#    nothing but that README.md.
fixtures=()
for dir in tests/data/*/; do
    dir=${dir%/}
    if [ ! -f "$dir/PROVENANCE.md" ] && [ -f "$dir/README.md" ]; then
        for sub in "$dir"/*/; do
            fixtures+=("${sub%/}")
        done
        stray=$(git ls-files -- "$dir" | grep -v -x -F "$dir/README.md" | grep -v "^$dir/[^/]*/")
        [ -z "$stray" ] || bad "files in the fixture group $dir outside its fixtures: $stray"
    else
        fixtures+=("$dir")
    fi
done
for dir in "${fixtures[@]}"; do
    prov=$dir/PROVENANCE.md
    if [ ! -f "$prov" ]; then
        bad "$dir has no PROVENANCE.md"
        continue
    fi
    # Table rows "| path | `sha256` |" (the hash in backticks, 64 hex digits).
    listed=$(sed -nE 's/^\| *([^|]+[^ |]) *\| *`([0-9a-f]{64})` *\|.*$/\1 \2/p' "$prov")
    if [ -z "$listed" ]; then
        bad "$prov lists no sha256"
        continue
    fi
    n_ok=0
    while read -r file sum; do
        if [ ! -f "$dir/$file" ]; then
            bad "$prov lists $file, which is not in $dir"
        elif [ "$(sha256sum "$dir/$file" | cut -c1-64)" != "$sum" ]; then
            bad "$dir/$file: sha256 differs from $prov"
        else
            n_ok=$((n_ok + 1))
        fi
    done <<<"$listed"
    while read -r f; do
        rel=${f#"$dir"/}
        [ "$rel" = PROVENANCE.md ] && continue
        grep -qxF "$rel" <<<"$(cut -d' ' -f1 <<<"$listed")" || bad "$f is not listed in $prov"
    done < <(git ls-files -- "$dir")
    echo "ok   $dir: $n_ok file(s) checked against PROVENANCE.md"
done

# 4. The registry manifest.
if python3 - tests/data/registry.json <<'PY'; then
import json, re, sys
fixtures = json.load(open(sys.argv[1], encoding="utf-8"))
hexsum = re.compile(r"^[0-9a-f]{64}$")
assert fixtures, "no fixtures"
for name, fx in fixtures.items():
    for key in ("package", "version", "tarball_sha256", "files", "license"):
        assert key in fx, "%s: no %s" % (name, key)
    assert hexsum.match(fx["tarball_sha256"]), name
    for f in fx["files"]:
        assert f.get("name") and f.get("member") and hexsum.match(f.get("sha256", "")), (name, f)
PY
    echo "ok   tests/data/registry.json"
else
    bad "tests/data/registry.json is malformed"
fi

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
