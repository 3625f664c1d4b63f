#!/usr/bin/env bash
# tests/tools/test_fetch_model.sh: tools/fetch-model against a file:// mirror of the hub.
#
#   test_fetch_model.sh GPTD_BINARY
#
# The test lays out the tiny GPT-2 of tests/data the way the hub serves it (the revision API's JSON
# with sizes, git blob ids and LFS sha256, and /REPO/resolve/COMMIT/FILE), with the hashes
# computed by git and sha256sum, and checks: a fetch gives byte-identical files that gptd serves
# identically; a re-run downloads nothing; a partial download resumes; a corrupt partial file
# and a tampered mirror are caught; repositories with only pickled weights, bad names and
# missing repositories are refused with a message.
set -euo pipefail
gptd=$(realpath "$1")
src=${GPTD_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
. "$src/tests/common.sh"
fetch=$src/tools/fetch-model
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The hub's gpt2 has both tokenizer layouts: the committed tiny model plus GPT-2's own
# vocab.json + merges.txt (registry fixture gpt2-vocab).
tiny=$tmp/tiny
mkdir "$tiny"
cp "$tiny_model"/*.json "$tiny_model/model.safetensors" "$tiny/"
for f in vocab.json merges.txt; do
    p=$(registry_path gpt2-vocab $f) || exit 1
    cp "$p" "$tiny/"
done
fails=0
ok() { printf 'ok   %s\n' "$1"; }
bad() { printf 'FAIL %s\n' "$1"; fails=$((fails + 1)); }
expect() { if eval "$1"; then ok "$2"; else bad "$2"; fi; }

commit=0123456789abcdef0123456789abcdef01234567
mirror=$tmp/mirror
# publish REPO FILE...: the mirror's API answer and resolve tree for those files of $tiny.
publish() {
    local repo=$1; shift
    mkdir -p "$mirror/api/models/$repo/revision" "$mirror/$repo/resolve/$commit"
    local entries=()
    for f in "$@"; do
        cp "$tiny/$f" "$mirror/$repo/resolve/$commit/$f" 2>/dev/null ||
            head -c 1000 /dev/urandom >"$mirror/$repo/resolve/$commit/$f"
        local p=$mirror/$repo/resolve/$commit/$f size
        size=$(stat -c %s "$p")
        case $f in
        *.safetensors | *.bin)
            entries+=("$(jq -n --arg f "$f" --argjson s "$size" --arg h "$(sha256sum <"$p" | cut -c1-64)" \
                '{rfilename: $f, size: 135, blobId: "ffffffffffffffffffffffffffffffffffffffff", lfs: {sha256: $h, size: $s, pointerSize: 135}}')") ;;
        *)
            entries+=("$(jq -n --arg f "$f" --argjson s "$size" --arg h "$(git hash-object "$p")" \
                '{rfilename: $f, size: $s, blobId: $h}')") ;;
        esac
    done
    printf '%s\n' "${entries[@]}" | jq -s --arg id "$repo" --arg sha "$commit" \
        '{id: $id, sha: $sha, siblings: ([{rfilename: ".gitattributes", size: 10, blobId: "0000000000000000000000000000000000000000"}, {rfilename: "README.md", size: 10, blobId: "0000000000000000000000000000000000000000"}] + .)}' \
        >"$mirror/api/models/$repo/revision/main"
}
publish test-org/tiny-gpt2 config.json tokenizer.json vocab.json merges.txt model.safetensors generation_config.json tokenizer_config.json
publish test-org/pickled config.json vocab.json merges.txt pytorch_model.bin
export HF_ENDPOINT=file://$mirror

run_fetch() { "$fetch" "$@" >"$tmp/log" 2>&1; }
same_files() {
    for f in config.json tokenizer.json vocab.json merges.txt model.safetensors; do
        cmp -s "$tiny/$f" "$1/$f" || return 1
    done
}

# 1. A fresh fetch.
d=$tmp/dest
expect 'run_fetch test-org/tiny-gpt2 "$d"' "fetch exits 0"
expect 'same_files "$d"' "fetched files are byte-identical to the originals"
expect '[ ! -e "$d/.partial" ] && [ "$(jq -r .commit "$d/.fetched.json")" = "$commit" ]' \
    "no .partial left; .fetched.json pins the commit"
expect '! grep -q "README\|gitattributes" "$tmp/log" && [ ! -e "$d/README.md" ]' \
    "files gptd does not read are not downloaded"
args=(generate --prompt-ids 464,3797,3332 -n 8 --json --logprobs 3)
want=$("$gptd" "${args[@]}" -m "$tiny" 2>/dev/null)
got=$("$gptd" "${args[@]}" -m "$d" 2>/dev/null || true)
expect '[ -n "$want" ] && [ "$want" = "$got" ]' "gptd gives the same output for the fetched model"

# 2. A re-run downloads nothing.
expect 'run_fetch test-org/tiny-gpt2 "$d" && [ "$(grep -c "already here" "$tmp/log")" = 7 ] && ! grep -q downloading "$tmp/log"' \
    "a re-run finds all 7 files already there"

# 3. A partial download resumes.
rm "$d/model.safetensors"
mkdir -p "$d/.partial"
size=$(stat -c %s "$tiny/model.safetensors")
head -c $((size / 2)) "$tiny/model.safetensors" >"$d/.partial/model.safetensors.part"
expect 'run_fetch test-org/tiny-gpt2 "$d" && grep -q "model.safetensors: resuming at $((size / 2)) of $size" "$tmp/log"' \
    "a partial model.safetensors resumes where it stopped"
expect 'same_files "$d"' "the resumed file is complete and correct"

# 4. A corrupt partial file is caught by the hash and fetched again.
rm "$d/model.safetensors"
mkdir -p "$d/.partial"
head -c $((size / 2)) /dev/zero >"$d/.partial/model.safetensors.part"
expect 'run_fetch test-org/tiny-gpt2 "$d" && grep -q "again from scratch" "$tmp/log"' \
    "a corrupt partial file fails the sha256 and is downloaded again"
expect 'same_files "$d"' "after the retry the file is correct"

# 5. A tampered mirror: the file does not match the metadata; nothing is installed.
m=$mirror/test-org/tiny-gpt2/resolve/$commit/model.safetensors
printf '\x01' | dd of="$m" bs=1 seek=$((size - 5)) conv=notrunc status=none
expect '! run_fetch test-org/tiny-gpt2 "$tmp/dest2" && grep -q "does not match the hub.s metadata twice" "$tmp/log"' \
    "a tampered weights file is refused"
expect '[ ! -e "$tmp/dest2/model.safetensors" ]' "no model.safetensors is installed from it"
cp "$tiny/model.safetensors" "$m"

# 6. Refusals.
expect '! run_fetch test-org/pickled "$tmp/dest3" && grep -q "only pickled PyTorch weights" "$tmp/log"' \
    "a repository with only pytorch_model.bin is refused"
expect '! run_fetch "../etc" "$tmp/dest4" && grep -q "not a hub repository name" "$tmp/log"' \
    "a repository name with .. is refused"
expect '! run_fetch test-org/nonexistent "$tmp/dest5" && grep -q "cannot read the file list" "$tmp/log"' \
    "a missing repository gets a clear error"
expect '! run_fetch test-org/tiny-gpt2 "$tmp/dest6" --revision "a b" && grep -q "not a revision" "$tmp/log"' \
    "a malformed revision is refused"

[ "$fails" = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
