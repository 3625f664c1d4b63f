#!/usr/bin/python3
"""heldout: writes the bundled model's held-out chapters (every 20th chapter of the KJV, as
train.py holds them out) as a JSON array of strings, for bench/bench_quality's --json input.

    python3 tools/train/heldout.py OUT.json
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    chapters = corpus.load_chapters()
    held = [c for i, c in enumerate(chapters) if i % 20 == 19]
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(held, f, ensure_ascii=False)
    print("%d held-out chapters of %d" % (len(held), len(chapters)))


if __name__ == "__main__":
    main()
