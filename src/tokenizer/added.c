/*
 * added.c: finding added tokens (<|endoftext|>, <s>, <|im_start|>, Gemma's 6,415 ...) in text,
 * before BPE, as Hugging Face does: the leftmost match, and among matches starting there the
 * longest.
 *
 * Built once at load (one trie for tokens matched in the raw text, one for tokens marked
 * "normalized", matched in normalized text); read by any encoding thread. A byte trie whose
 * edges live in one open-addressing table: a search looks at each text byte once through a
 * 256-entry "can a token start here" table and walks the trie only where one can, so the cost
 * does not grow with the number of added tokens.
 *
 * Flags: lstrip / rstrip widen a match over the Unicode whitespace beside it; single_word is
 * refused at load (tokenizer_load.c) because no supported model uses it.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static uint64_t edge_key(int32_t node, unsigned char byte) {
    return (((uint64_t)(uint32_t)node << 8) | byte) + 1;
}

static size_t edge_slot(const struct added_trie *t, uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 29) & t->edges_mask;
}

static int32_t trie_child(const struct added_trie *t, int32_t node, unsigned char byte) {
    uint64_t key = edge_key(node, byte);
    for (size_t i = edge_slot(t, key);; i = (i + 1) & t->edges_mask) {
        if (t->edges[i].key == key) {
            return t->edges[i].child;
        }
        if (t->edges[i].key == 0) {
            return -1;
        }
    }
}

int added_trie_build(const struct tokenizer *tok, struct added_trie *trie, int which) {
    memset(trie, 0, sizeof(*trie));
    size_t total = 0;
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].normalized == which) {
            total += tok->added[i].n_bytes;
            trie->n_tokens++;
        }
    }
    if (trie->n_tokens == 0) {
        return 0;
    }
    size_t size = 16;
    while (size < total * 2) {
        size *= 2;
    }
    trie->edges = calloc(size, sizeof(*trie->edges));
    trie->terminal = malloc((total + 1) * sizeof(*trie->terminal));
    if (trie->edges == NULL || trie->terminal == NULL) {
        return -1;
    }
    trie->edges_mask = size - 1;
    trie->n_nodes = 1;
    trie->terminal[0] = -1;
    for (size_t i = 0; i < tok->n_added; i++) {
        const struct added_token *a = &tok->added[i];
        if (a->normalized != which || a->n_bytes == 0) {
            continue;
        }
        int32_t node = 0;
        for (size_t k = 0; k < a->n_bytes; k++) {
            unsigned char b = (unsigned char)a->bytes[k];
            int32_t child = trie_child(trie, node, b);
            if (child < 0) {
                child = (int32_t)trie->n_nodes++;
                trie->terminal[child] = -1;
                uint64_t key = edge_key(node, b);
                size_t j = edge_slot(trie, key);
                while (trie->edges[j].key != 0) {
                    j = (j + 1) & trie->edges_mask;
                }
                trie->edges[j].key = key;
                trie->edges[j].child = child;
            }
            node = child;
        }
        /* Two tokens with the same content: the first listed keeps it. */
        if (trie->terminal[node] < 0) {
            trie->terminal[node] = (int32_t)i;
        }
        trie->can_start[(unsigned char)a->bytes[0]] = 1;
    }
    /* One start byte for all (Llama 3's and Qwen's "<|...|>", GPT-2's one token): the search
     * can jump with memchr. */
    trie->only_start = -1;
    for (int b = 0; b < 256; b++) {
        if (trie->can_start[b]) {
            trie->only_start = trie->only_start == -1 ? b : -2;
        }
    }
    trie->only_start = trie->only_start < 0 ? -1 : trie->only_start;
    return 0;
}

void added_trie_free(struct added_trie *trie) {
    free(trie->edges);
    free(trie->terminal);
    memset(trie, 0, sizeof(*trie));
}

/* Length of the Unicode White_Space character at s[i] (s valid UTF-8), or 0. */
static size_t space_at(const unsigned char *s, size_t n, size_t i) {
    unsigned char c = s[i];
    if (c < 0x80) {
        return (c == ' ' || (c >= 0x09 && c <= 0x0d)) ? 1 : 0;
    }
    size_t len = tok_utf8_lead_len(c);
    if (i + len > n) {
        return 0;
    }
    uint32_t cp = c & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
        cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    int is_space = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
                   cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
    return is_space ? len : 0;
}

long added_find(const struct tokenizer *tok, const struct added_trie *trie, const char *text,
                size_t len, size_t from, int flags, size_t *start, size_t *end) {
    if (trie->n_tokens == 0) {
        return -1;
    }
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = from; i < len; i++) {
        if (trie->only_start >= 0) {
            const unsigned char *hit = memchr(s + i, trie->only_start, len - i);
            if (hit == NULL) {
                return -1;
            }
            i = (size_t)(hit - s);
        } else if (!trie->can_start[s[i]]) {
            continue;
        }
        long best = -1;
        size_t best_end = 0;
        int32_t node = 0;
        for (size_t j = i; j < len; j++) {
            node = trie_child(trie, node, s[j]);
            if (node < 0) {
                break;
            }
            int32_t t = trie->terminal[node];
            if (t >= 0 && (!tok->added[t].is_special || (flags & TOKENIZER_PARSE_SPECIAL))) {
                best = t;
                best_end = j + 1;
            }
        }
        if (best < 0) {
            continue;
        }
        const struct added_token *a = &tok->added[best];
        size_t a_start = i;
        if (a->lstrip) {
            /* Back over whitespace to the left, one character at a time. */
            while (a_start > from) {
                size_t k = a_start - 1;
                while (k > from && (s[k] & 0xc0) == 0x80) {
                    k--;
                }
                if (space_at(s, len, k) != a_start - k) {
                    break;
                }
                a_start = k;
            }
        }
        if (a->rstrip) {
            size_t w;
            while (best_end < len && (w = space_at(s, len, best_end)) > 0) {
                best_end += w;
            }
        }
        *start = a_start;
        *end = best_end;
        return best;
    }
    return -1;
}
