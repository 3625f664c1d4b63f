/*
 * tokenizer.c: text -> ids (tokenizer_encode) and the read-only accessors.
 *
 * Called from HTTP threads (prompts, concurrently), the CLI and tests. Encoding is three
 * stages, each as Hugging Face's pipeline does it for GPT-2:
 *   1. added tokens (<|endoftext|>) are cut out of the text first, leftmost-longest;
 *   2. each remaining span is split into pre-tokens by the GPT-2 pattern (PCRE2, JIT);
 *   3. each pre-token's bytes are BPE-merged (bpe.c), through the shared cache.
 * Per call it allocates the output array, one PCRE2 match block and one scratch buffer; nothing
 * per pre-token.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (err == NULL || err_size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

int32_t tokenizer_n_vocab(const struct tokenizer *tok) {
    return tok->n_vocab;
}

int32_t tokenizer_eos_id(const struct tokenizer *tok) {
    return tok != NULL ? tok->eos_id : -1;
}

size_t tokenizer_max_token_bytes(const struct tokenizer *tok) {
    return tok != NULL ? tok->max_token_bytes : 0;
}

const char *tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, size_t *len) {
    if (tok == NULL || id < 0 || id >= tok->n_vocab || !tok->is_valid[id]) {
        *len = 0;
        return NULL;
    }
    *len = tok->token_off[id + 1] - tok->token_off[id];
    return tok->blob + tok->token_off[id];
}

int32_t tokenizer_token_id(const struct tokenizer *tok, const char *bytes, size_t len) {
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].n_bytes == len && memcmp(tok->added[i].bytes, bytes, len) == 0) {
            return tok->added[i].id;
        }
    }
    return tokenizer_vocab_lookup(tok, bytes, len, tokenizer_hash_bytes(bytes, len));
}

/*
 * Returns the offset of the first invalid UTF-8 sequence in s[0..n), or n when all is valid.
 * Strict, like PCRE2's own check: no overlongs, no surrogates, nothing above U+10FFFF.
 */
static size_t utf8_first_invalid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs, 8 bytes at a time: most text is mostly ASCII. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) {
                break;
            }
            i += 8;
        }
        if (i >= n) {
            break;
        }
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80;
        unsigned char hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            lo = c == 0xe0 ? 0xa0 : 0x80;
            hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        } else {
            return i;
        }
        if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) {
            return i;
        }
        for (size_t k = 2; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return i;
            }
        }
        i += len;
    }
    return n;
}

/* Everything one encode call needs besides the tokenizer. */
struct encode_state {
    struct tokenizer *tok;
    pcre2_match_data *md;
    struct bpe_scratch scratch;
    int32_t *ids;
    size_t n_ids;
    size_t cap_ids;
};

/* Pre-tokenizes text[start..end) (no added tokens inside) and BPE-encodes each piece. */
static int encode_span(struct encode_state *st, const char *text, size_t start, size_t end) {
    const struct tokenizer *tok = st->tok;
    PCRE2_SPTR subject = (PCRE2_SPTR)text;
    size_t at = start;
    while (at < end) {
        /* NO_UTF_CHECK: the whole text was validated once; without it PCRE2 would re-check
         * the subject on every call, which is quadratic over a long text. */
        int rc = pcre2_match(tok->split_re, subject, end, at, PCRE2_NO_UTF_CHECK, st->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            /* Not expected with this pattern (its repeats are plain character classes), but
             * the interpreter keeps its backtracking frames on the heap, so retry there. */
            rc = pcre2_match(tok->split_re, subject, end, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                             st->md, NULL);
        }
        size_t m_start;
        size_t m_end;
        if (rc > 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
            m_start = ov[0];
            m_end = ov[1];
        } else if (rc == PCRE2_ERROR_NOMATCH) {
            m_start = end;
            m_end = end;
        } else {
            return -2;
        }
        /* The pattern covers every character, so gaps cannot happen; if one did, its bytes
         * still get encoded rather than silently dropped. */
        if (m_start > at &&
            bpe_encode_word(st->tok, (const unsigned char *)text + at, m_start - at, &st->scratch,
                            &st->ids, &st->n_ids, &st->cap_ids) != 0) {
            return -1;
        }
        if (m_end == m_start) {
            break; /* no match (or an empty one, impossible for this pattern) */
        }
        if (bpe_encode_word(st->tok, (const unsigned char *)text + m_start, m_end - m_start,
                            &st->scratch, &st->ids, &st->n_ids, &st->cap_ids) != 0) {
            return -1;
        }
        at = m_end;
    }
    return 0;
}

/* Finds the leftmost (then longest) active added token in text[from..len). Returns its index
 * in tok->added and sets *pos, or returns -1. next_at caches each token's next occurrence
 * (SIZE_MAX: not searched yet; len: none) so a long text is scanned once per token, not once
 * per match. */
static long find_added(const struct tokenizer *tok, const char *text, size_t len, size_t from,
                       int flags, size_t *next_at, size_t *pos) {
    long best = -1;
    size_t best_at = len;
    for (size_t i = 0; i < tok->n_added; i++) {
        const struct added_token *a = &tok->added[i];
        if (a->is_special && !(flags & TOKENIZER_PARSE_SPECIAL)) {
            continue;
        }
        if (next_at[i] == SIZE_MAX || next_at[i] < from) {
            const char *hit = NULL;
            if (len - from >= a->n_bytes) {
                const char *p = text + from;
                const char *last = text + len - a->n_bytes;
                while (p <= last) {
                    p = memchr(p, a->bytes[0], (size_t)(last - p) + 1);
                    if (p == NULL) {
                        break;
                    }
                    if (memcmp(p, a->bytes, a->n_bytes) == 0) {
                        hit = p;
                        break;
                    }
                    p++;
                }
            }
            next_at[i] = hit != NULL ? (size_t)(hit - text) : len;
        }
        /* Longest first in tok->added, so on a tie the earlier (longer) one stays. */
        if (next_at[i] < best_at) {
            best_at = next_at[i];
            best = (long)i;
        }
    }
    *pos = best_at;
    return best;
}

int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, int flags, int32_t **ids,
                     size_t *n_ids, char *err, size_t err_size) {
    *ids = NULL;
    *n_ids = 0;
    size_t bad = utf8_first_invalid((const unsigned char *)text, len);
    if (bad < len) {
        set_err(err, err_size, "text is not valid UTF-8 (byte %zu)", bad);
        return -1;
    }
    struct encode_state st = {.tok = tok};
    size_t *next_at = NULL;
    int rc = -1;
    st.cap_ids = len / 3 + 16;
    st.ids = malloc(st.cap_ids * sizeof(*st.ids));
    st.md = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
    if (tok->n_added > 0) {
        next_at = calloc(tok->n_added, sizeof(*next_at));
    }
    if (st.ids == NULL || st.md == NULL || (tok->n_added > 0 && next_at == NULL)) {
        set_err(err, err_size, "out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        next_at[i] = SIZE_MAX; /* not searched yet */
    }
    size_t at = 0;
    int span_rc = 0;
    while (at < len && span_rc == 0) {
        size_t added_at = len;
        long i_added = -1;
        if (tok->n_added > 0) {
            i_added = find_added(tok, text, len, at, flags, next_at, &added_at);
        }
        span_rc = encode_span(&st, text, at, added_at);
        if (span_rc == 0 && i_added >= 0) {
            if (st.n_ids == st.cap_ids) {
                size_t cap = st.cap_ids * 2;
                int32_t *grown = realloc(st.ids, cap * sizeof(*grown));
                if (grown == NULL) {
                    span_rc = -1;
                    break;
                }
                st.ids = grown;
                st.cap_ids = cap;
            }
            st.ids[st.n_ids++] = tok->added[i_added].id;
            at = added_at + tok->added[i_added].n_bytes;
        } else {
            at = added_at;
        }
    }
    if (span_rc == -2) {
        set_err(err, err_size, "pre-tokenizer failed (PCRE2 match error)");
        goto cleanup;
    }
    if (span_rc != 0) {
        set_err(err, err_size, "out of memory");
        goto cleanup;
    }
    *ids = st.ids;
    *n_ids = st.n_ids;
    st.ids = NULL;
    rc = 0;
cleanup:
    free(st.ids);
    free(st.scratch.mem);
    free(next_at);
    pcre2_match_data_free(st.md);
    return rc;
}
