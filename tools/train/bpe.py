"""bpe: trains a GPT-2-style byte-level BPE vocabulary, and encodes text with it.

Training follows GPT-2's recipe: split the text with GPT-2's pre-tokenization pattern (so merges
never cross a word boundary), count each distinct pre-token, start from the 256 byte tokens and
repeatedly merge the most frequent adjacent pair. Pair counts are kept incrementally (only the
words that contain the merged pair are revisited), so a few thousand merges over the Bible take
seconds. Ties between equally frequent pairs go to the pair whose byte strings sort first, which
makes training deterministic.

The result is a vocabulary in GPT-2's own id order (the 256 bytes first, then merges by rank,
then <|endoftext|>) and merges by rank: written as tokenizer.json it encodes exactly like
Hugging Face tokenizers would with the same files; tests/test_bundled_model.sh checks that
gptd encodes the whole corpus to the same ids as Encoder below.
"""

import collections

import regex

import hfgpt2

GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOS = "<|endoftext|>"


def pretokenize(text):
    return GPT2_PATTERN.findall(text)


def train(texts, vocab_size):
    """texts: iterable of strings. Returns (vocab {token string: id}, merges [(a, b)]), with
    vocab_size entries in all (256 bytes + merges + <|endoftext|>)."""
    n_merges = vocab_size - 256 - 1
    if n_merges < 0:
        raise ValueError("vocab_size must be at least 257")
    counts = collections.Counter()
    for t in texts:
        counts.update(pretokenize(t))
    words = [list(w.encode("utf-8")) for w in counts]  # token ids: bytes first
    freqs = list(counts.values())
    token_bytes = [bytes([b]) for b in range(256)]

    pair_count = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indices of words that contain it
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freqs[i]
            where[p].add(i)

    merges = []
    for _ in range(n_merges):
        if not pair_count:
            break
        best = max(pair_count.items(),
                   key=lambda kv: (kv[1], _neg_bytes(token_bytes[kv[0][0]] +
                                                     b"\x00" + token_bytes[kv[0][1]])))[0]
        if pair_count[best] < 2:
            break
        new_id = len(token_bytes)
        token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
        merges.append(best)
        for i in list(where[best]):
            w = words[i]
            f = freqs[i]
            for p in zip(w, w[1:]):  # take the word's pairs out...
                pair_count[p] -= f
                if pair_count[p] <= 0:
                    del pair_count[p]
                where[p].discard(i)
            out = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == best[0] and w[j + 1] == best[1]:
                    out.append(new_id)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):  # ...and the merged word's pairs back in
                pair_count[p] += f
                where[p].add(i)
        where.pop(best, None)

    # GPT-2 id order: byte tokens in byte_token_order, then merged tokens by rank, then EOS.
    b2u = hfgpt2.bytes_to_unicode()
    order = hfgpt2.byte_token_order()
    old_to_new = {}
    for new, b in enumerate(order):
        old_to_new[b] = new
    for k in range(len(merges)):
        old_to_new[256 + k] = 256 + k

    def name(tid):
        return "".join(b2u[b] for b in token_bytes[tid])

    vocab = {}
    for tid in sorted(old_to_new, key=lambda t: old_to_new[t]):
        vocab[name(tid)] = old_to_new[tid]
    vocab[EOS] = len(vocab)
    merge_names = [(name(a), name(b)) for a, b in merges]
    return vocab, merge_names


def _neg_bytes(b):
    """A key under which max() prefers the lexicographically smaller byte string."""
    return tuple(255 - x for x in b) + (256,)


class Encoder:
    """Encodes text with a trained vocabulary (used to tokenize the training corpus)."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.b2u = hfgpt2.bytes_to_unicode()
        self.cache = {}

    def _bpe(self, word):
        parts = [self.b2u[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            best = None
            for k in range(len(parts) - 1):
                r = self.ranks.get((parts[k], parts[k + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, k)
            if best is None:
                break
            k = best[1]
            parts[k:k + 2] = [parts[k] + parts[k + 1]]
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        ids = []
        for w in pretokenize(text):
            got = self.cache.get(w)
            if got is None:
                got = self.cache[w] = self._bpe(w)
            ids.extend(got)
        return ids
