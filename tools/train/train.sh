#!/usr/bin/env bash
# tools/train/train.sh: trains gptd's bundled model (models/kjv-small) in one command.
#
#   bash tools/train/train.sh [OUT_DIR]      (default: models/kjv-small; about an hour on 2 cores)
#
# Installs what training needs from Debian (PyTorch, numpy, the regex module for the GPT-2
# pre-tokenizer pattern, the King James Bible), then runs train.py with the settings the committed
# model was trained with. Seeds are fixed: the same PyTorch on the same machine gives the same
# weights. Not part of CI; tests/test_bundled_model.sh checks the committed result.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-models/kjv-small}

need=()
for p in python3-torch python3-numpy python3-regex bible-kjv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

exec /usr/bin/python3 tools/train/train.py --out "$out" --vocab 4096 --ctx 256 --layers 4 \
    --heads 4 --embd 256 --batch 16 --steps 1800 --warmup 100 --lr 1.5e-3 --eval-every 300 \
    --threads 2 --seed 1337 --fp16
