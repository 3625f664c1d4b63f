/*
 * detok.c: ids -> text. tokenizer_decode for a whole sequence and struct detok for streaming
 * (one per generated sequence, used on the engine thread).
 *
 * DESIGN: both run the same per-token step and the same byte-at-a-time UTF-8 machine, so
 * "streamed output == whole decode" holds by construction. A token's text was fixed at load
 * (byte-level unmapping, or the SentencePiece decoder's "▁" -> " " and <0xNN> -> byte), so the
 * only decoder rules left for decode time are the ones about position: skipping special tokens,
 * the Strip of leading spaces of the whole text (after Fuse), and the Metaspace decoder's strip
 * of the first token's leading space; both strips apply only at the start of a sequence, never
 * to TOKENIZER_CONTINUATION. Byte tokens assemble multi-byte characters across tokens in the
 * same machine that joins byte-level tokens. The machine keeps the bytes of a character that is
 * valid so far but not complete; each invalid stretch becomes one U+FFFD per maximal subpart
 * (Unicode's recommendation, which Python's errors="replace" and Rust's from_utf8_lossy, hence
 * Hugging Face, follow): a lead byte whose continuation breaks off gives one U+FFFD for the lead
 * and what followed it, and the breaking byte is then read afresh.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static const char replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd}; /* U+FFFD */

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
                if (*n_pending == tok_utf8_lead_len(pending[0])) {
                    at = put(out, cap, at, pending, *n_pending);
                    *n_pending = 0;
                }
                continue;
            }
            at = put(out, cap, at, replacement, sizeof(replacement));
            *n_pending = 0;
        }
        size_t len = tok_utf8_lead_len(c);
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

void detok_init_with(struct detok *d, const struct tokenizer *tok, int flags) {
    memset(d, 0, sizeof(*d));
    d->tok = tok;
    d->flags = flags;
    d->is_first = 1;
    if (tok != NULL && !(flags & TOKENIZER_CONTINUATION)) {
        d->strip_left = tok->dec_strip_start;
    }
}

void detok_init(struct detok *d, const struct tokenizer *tok) {
    detok_init_with(d, tok, 0);
}

/* Decodes one id into out[at..cap): the shared step of the whole and the streaming decoder.
 * Returns the new end of the output. */
static size_t decode_one(struct detok *d, int32_t id, char *out, size_t cap, size_t at) {
    const struct tokenizer *tok = d->tok;
    size_t n;
    const char *p = tokenizer_token_bytes(tok, id, &n);
    if (p == NULL || ((d->flags & TOKENIZER_SKIP_SPECIAL) && tok->is_special[id])) {
        return at;
    }
    if (d->is_first) {
        d->is_first = 0;
        if (tok->dec_strip_first_token && !(d->flags & TOKENIZER_CONTINUATION) && n > 0 &&
            p[0] == ' ') {
            p++;
            n--;
        }
    }
    size_t start = at;
    at = utf8_feed(d->pending, &d->n_pending, (const unsigned char *)p, n, out, cap, at);
    if (d->strip_left > 0 && at > start) {
        /* Strip (after Fuse) works on the whole text: drop leading strip characters until the
         * first other character, at most strip_left of them. */
        size_t k = 0;
        while (k < d->strip_left && start + k < at && out[start + k] == tok->dec_strip_char) {
            k++;
        }
        memmove(out + start, out + start + k, at - start - k);
        at -= k;
        d->strip_left = at > start ? 0 : d->strip_left - k;
    }
    return at;
}

char *tokenizer_decode_with(const struct tokenizer *tok, const int32_t *ids, size_t n_ids,
                            int flags, size_t *len) {
    /* Worst case every byte becomes a 3-byte U+FFFD. */
    size_t n_bytes = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        if (tokenizer_token_bytes(tok, ids[i], &n) != NULL) {
            n_bytes += n;
        }
    }
    size_t cap = n_bytes * 3 + 4;
    char *out = malloc(cap);
    if (out == NULL) {
        return NULL;
    }
    struct detok d;
    detok_init_with(&d, tok, flags);
    size_t at = 0;
    for (size_t i = 0; i < n_ids; i++) {
        at = decode_one(&d, ids[i], out, cap, at);
    }
    if (d.n_pending > 0) {
        at = put(out, cap, at, replacement, sizeof(replacement));
    }
    out[at] = '\0';
    if (len != NULL) {
        *len = at;
    }
    return out;
}

char *tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, size_t n_ids, size_t *len) {
    return tokenizer_decode_with(tok, ids, n_ids, 0, len);
}

size_t detok_feed(struct detok *d, int32_t id, char *out, size_t cap) {
    if (d->tok == NULL) {
        return 0;
    }
    return decode_one(d, id, out, cap, 0);
}

size_t detok_flush(struct detok *d, char *out, size_t cap) {
    size_t at = 0;
    if (d->n_pending > 0) {
        at = put(out, cap, 0, replacement, sizeof(replacement));
    }
    detok_init_with(d, d->tok, d->flags);
    return at;
}
