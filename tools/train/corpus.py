"""corpus: the King James Bible as plain text, from Debian's bible-kjv-text package.

The package stores the text in its own compressed format, read through the `bible` program
(package bible-kjv). `bible "Ge1:1-Re22:21"` prints every chapter as a "Book N" heading, then
verses as "  N text" with lines wrapped at 80 columns. This module turns that into one document
per chapter, one verse per line, verse numbers and headings dropped:

    In the beginning God created the heaven and the earth.
    And the earth was without form, and void; ...

load_chapters() returns the list of chapter texts, in canonical order.
"""

import re
import subprocess

VERSE = re.compile(r"^\s+(\d+) (.*)$")


def load_chapters(bible="bible"):
    out = subprocess.run([bible, "Ge1:1-Re22:21"], check=True, capture_output=True,
                         text=True).stdout
    chapters = []
    verses = None
    for line in out.splitlines():
        if not line.strip():
            continue
        m = VERSE.match(line)
        if m:
            verses.append(m.group(2).strip())
        elif line.startswith(" ") or verses is None or not verses:
            # A heading is never indented; an indented line without a number cannot happen.
            if not line.startswith(" ") and (verses is None or not verses):
                verses = [] if verses is None else verses
                continue
            raise ValueError("unexpected line in bible output: %r" % line)
        elif re.match(r"^[1-3]?\s?[A-Z][A-Za-z ]+ \d+$", line):
            chapters.append("\n".join(verses) + "\n")
            verses = []
        else:
            verses[-1] += " " + line.strip()  # continuation of a wrapped verse
    if verses:
        chapters.append("\n".join(verses) + "\n")
    return chapters


if __name__ == "__main__":
    ch = load_chapters()
    text = "".join(ch)
    print("%d chapters, %d bytes, %d verses" % (len(ch), len(text), text.count("\n")))
    print(ch[0][:300])
