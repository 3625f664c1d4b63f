/*
 * detok.c: ids -> text. tokenizer_decode for a whole sequence and struct detok for streaming
 * (one per generated sequence, used on the engine thread).
 *
 * DESIGN: both run the same byte-at-a-time UTF-8 machine, so "streamed output == whole decode"
 * holds by construction. The machine keeps the bytes of a character that is valid so far but not
 * complete; each invalid stretch becomes one U+FFFD per maximal subpart (Unicode's
 * recommendation, which Python's errors="replace" and Rust's from_utf8_lossy, hence Hugging Face,
 * follow): a lead byte whose continuation breaks off gives one U+FFFD for the lead and what
 * followed it, and the breaking byte is then read afresh.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */

/* Length of the character that lead byte c starts, or 0 when c cannot start one. */
static size_t utf8_lead_len(unsigned char c) {
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        return 2;
    }
    if (c >= 0xe0 && c <= 0xef) {
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        return 4;
    }
    return 0;
}

/* Whether c may follow pending[0..n_pending) (n_pending >= 1) inside one character. */
static int utf8_continues(const unsigned char *pending, size_t n_pending, unsigned char c) {
    if (n_pending == 1) {
        unsigned char lead = pending[0];
        unsigned char lo = lead == 0xe0 ? 0xa0 : lead == 0xf0 ? 0x90 : 0x80;
        unsigned char hi = lead == 0xed ? 0x9f : lead == 0xf4 ? 0x8f : 0xbf;
        return c >= lo && c <= hi;
    }
    return (c & 0xc0) == 0x80;
}

/* Writes n bytes if they fit; a too-small buffer is the caller's bug (see the header). */
static size_t put(char *out, size_t cap, size_t at, const void *bytes, size_t n) {
    assert(at + n <= cap);
    if (at + n > cap) {
        return at;
    }
    memcpy(out + at, bytes, n);
    return at + n;
}

/* Feeds bytes through the machine, appending completed text to out[at..cap). Returns the new
 * end of the output. */
static size_t utf8_feed(unsigned char *pending, size_t *n_pending, const unsigned char *bytes,
                        size_t n, char *out, size_t cap, size_t at) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = bytes[i];
        if (*n_pending > 0) {
            if (utf8_continues(pending, *n_pending, c)) {
                pending[(*n_pending)++] = c;
                if (*n_pending == utf8_lead_len(pending[0])) {
                    at = put(out, cap, at, pending, *n_pending);
                    *n_pending = 0;
                }
                continue;
            }
            at = put(out, cap, at, replacement, sizeof(replacement));
            *n_pending = 0;
        }
        size_t len = utf8_lead_len(c);
        if (len == 1) {
            if (at < cap) {
                out[at++] = (char)c;
            }
        } else if (len == 0) {
            at = put(out, cap, at, replacement, sizeof(replacement));
        } else {
            pending[0] = c;
            *n_pending = 1;
        }
    }
    return at;
}

size_t utf8_replaced_len(const unsigned char *bytes, size_t n) {
    /* Run the machine into a small window and count, so the rules live in one place. */
    unsigned char pending[8];
    size_t n_pending = 0;
    size_t total = 0;
    char window[64];
    for (size_t i = 0; i < n; i++) {
        total += utf8_feed(pending, &n_pending, bytes + i, 1, window, sizeof(window), 0);
    }
    return total + (n_pending > 0 ? sizeof(replacement) : 0);
}

char *tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, size_t *len) {
    /* Worst case every byte becomes a 3-byte U+FFFD. */
    size_t n_bytes = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        if (tokenizer_token_bytes(tok, ids[i], &n) != NULL) {
            n_bytes += n;
        }
    }
    size_t cap = n_bytes * 3 + 1;
    char *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    unsigned char pending[8];
    size_t n_pending = 0;
    size_t at = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        const char *p = tokenizer_token_bytes(tok, ids[i], &n);
        if (p != NULL) {
            at = utf8_feed(pending, &n_pending, (const unsigned char *)p, n, out, cap, at);
        }
    }
    if (n_pending > 0) {
        at = put(out, cap, at, replacement, sizeof(replacement));
    }
    out[at] = '\0';
    if (len != NULL) {
        *len = at;
    }
    return out;
}

void detok_init(struct detok *d, const struct tokenizer *tok) {
    memset(d, 0, sizeof(*d));
    d->tok = tok;
}

size_t detok_feed(struct detok *d, int32_t id, char *out, size_t cap) {
    size_t n;
    const char *p = tokenizer_token_bytes(d->tok, id, &n);
    if (p == NULL) {
        return 0;
    }
    return utf8_feed(d->pending, &d->n_pending, (const unsigned char *)p, n, out, cap, 0);
}

size_t detok_flush(struct detok *d, char *out, size_t cap) {
    size_t at = 0;
    if (d->n_pending > 0) {
        at = put(out, cap, 0, replacement, sizeof(replacement));
    }
    d->n_pending = 0;
    return at;
}
