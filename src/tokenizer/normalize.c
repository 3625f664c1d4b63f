/*
 * normalize.c: the normalizer steps of tokenizer.json (NFC, Prepend, Replace), applied to each
 * segment of text between added tokens, as Hugging Face's pipeline does.
 *
 * Called from tokenizer_encode on whichever thread encodes, and once at load for the contents
 * of added tokens marked "normalized". Works in two ping-pong buffers owned by the encode call,
 * grown only when too small, so a long text allocates a few times at most, never per segment.
 *
 * NFC comes from utf8proc (Debian's libutf8proc, Unicode 15 in bookworm's 2.8): a small C
 * library that works on UTF-8 directly and carries only the normalization and property tables,
 * where ICU would add a 30 MB data library and UTF-16 conversions for one function. Text whose
 * code points are all below U+0300 is already NFC (nothing there composes or decomposes), which
 * a byte scan decides, so most prose never reaches utf8proc.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_internal.h"

int scratch_reserve(struct bpe_scratch *s, size_t n) {
    if (s->cap_bytes >= n) {
        return 0;
    }
    size_t cap = s->cap_bytes == 0 ? 4096 : s->cap_bytes;
    while (cap < n) {
        cap *= 2;
    }
    void *mem = realloc(s->mem, cap);
    if (mem == NULL) {
        return -1;
    }
    /* Zero what is new: PCRE2's JIT scans for a literal first character with wide loads that
     * may look past the subject's end, into bytes it then ignores; zeroed, they are defined
     * (and valgrind stays quiet). Growth is rare, so this costs nothing per call. */
    memset((char *)mem + s->cap_bytes, 0, cap - s->cap_bytes);
    s->mem = mem;
    s->cap_bytes = cap;
    return 0;
}

/* Whether text is NFC for sure without looking it up: every byte below 0xCC means every code
 * point is below U+0300, where no character has a decomposition or combines. */
static int is_trivially_nfc(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0xcc) {
            return 0;
        }
    }
    return 1;
}

/* NFC of in[0..n), left in u32's memory as UTF-8. Returns the length, or SIZE_MAX when out of
 * memory. */
static size_t nfc_window(const char *in, size_t n, struct bpe_scratch *u32) {
    const utf8proc_option_t opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    /* Decomposing grows a text by a bounded factor; retry with what utf8proc says it needs. */
    size_t cap_cp = n + 16;
    for (;;) {
        if (scratch_reserve(u32, cap_cp * sizeof(utf8proc_int32_t)) != 0) {
            return SIZE_MAX;
        }
        utf8proc_ssize_t got =
            utf8proc_decompose((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, u32->mem,
                               (utf8proc_ssize_t)(u32->cap_bytes / sizeof(utf8proc_int32_t)), opts);
        if (got < 0) {
            return SIZE_MAX; /* the text was validated, so only memory can fail */
        }
        if ((size_t)got < u32->cap_bytes / sizeof(utf8proc_int32_t)) {
            /* Compose and re-encode as UTF-8 in place: 4 bytes per code point at most, which
             * is what each int32 slot holds, plus the NUL utf8proc writes (the slot after). */
            utf8proc_ssize_t m = utf8proc_reencode(u32->mem, got, opts);
            return m < 0 ? SIZE_MAX : (size_t)m;
        }
        cap_cp = (size_t)got + 1;
    }
}

/* Appends bytes to out (out->mem, *m bytes used so far). Returns 0, or -1 when out of memory. */
static int append(struct bpe_scratch *out, size_t *m, const void *bytes, size_t n) {
    if (scratch_reserve(out, *m + n + 1) != 0) {
        return -1;
    }
    memcpy((char *)out->mem + *m, bytes, n);
    *m += n;
    return 0;
}

/*
 * NFC of in[0..n) into out, calling utf8proc only where it can change something. A character
 * below U+0300 is a boundary NFC never reaches across: it combines with nothing before it (every
 * character that composes with a previous one is U+0300 or above) and, being a starter, stops
 * reordering. So each run of characters at or above U+0300, together with the character before
 * it, is normalized alone, and everything else is copied. Returns the length, or SIZE_MAX.
 */
static size_t nfc(const char *in, size_t n, struct bpe_scratch *out, struct bpe_scratch *u32) {
    const unsigned char *s = (const unsigned char *)in;
    size_t m = 0;
    size_t copied = 0;   /* in[0..copied) is in out */
    size_t boundary = 0; /* start of the last character below U+0300 */
    size_t i = 0;
    while (i < n) {
        size_t len = tok_utf8_lead_len(s[i]);
        len = len == 0 ? 1 : len;
        if (s[i] < 0xcc) { /* a lead byte below 0xCC: a code point below U+0300 */
            boundary = i;
            i += len;
            continue;
        }
        size_t start = boundary > copied ? boundary : copied;
        size_t end = i;
        while (end < n && s[end] >= 0xcc) {
            size_t l = tok_utf8_lead_len(s[end]);
            end += l == 0 ? 1 : l;
        }
        end = end > n ? n : end;
        if (append(out, &m, in + copied, start - copied) != 0) {
            return SIZE_MAX;
        }
        size_t w = nfc_window(in + start, end - start, u32);
        if (w == SIZE_MAX || append(out, &m, u32->mem, w) != 0) {
            return SIZE_MAX;
        }
        copied = end;
        boundary = end;
        i = end;
    }
    if (append(out, &m, in + copied, n - copied) != 0) {
        return SIZE_MAX;
    }
    return m;
}

const char *normalize_apply(const struct tokenizer *tok, const char *text, size_t n,
                            struct bpe_scratch *buf_a, struct bpe_scratch *buf_b,
                            struct bpe_scratch *u32, size_t *n_out) {
    const char *cur = text;
    size_t len = n;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const struct norm_step *st = &tok->norm[k];
        /* The next buffer is whichever cur is not in. */
        struct bpe_scratch *dst = cur == buf_a->mem ? buf_b : buf_a;
        if (st->kind == NORM_NFC) {
            if (is_trivially_nfc((const unsigned char *)cur, len)) {
                continue;
            }
            size_t m = nfc(cur, len, dst, u32);
            if (m == SIZE_MAX) {
                return NULL;
            }
            cur = dst->mem;
            len = m;
        } else if (st->kind == NORM_PREPEND) {
            if (len == 0) {
                continue;
            }
            if (scratch_reserve(dst, st->n_from + len + 1) != 0) {
                return NULL;
            }
            char *out = dst->mem;
            memcpy(out, st->from, st->n_from);
            memmove(out + st->n_from, cur, len);
            cur = out;
            len += st->n_from;
        } else {
            size_t hit = tok_find(cur, len, st->from, st->n_from);
            if (hit == SIZE_MAX) {
                continue;
            }
            /* Worst case every byte is an occurrence. */
            size_t most = len / st->n_from * (st->n_to > st->n_from ? st->n_to : st->n_from) +
                          len % st->n_from + 1;
            if (scratch_reserve(dst, most + len) != 0) {
                return NULL;
            }
            char *out = dst->mem;
            size_t m = 0;
            size_t i = 0;
            while (hit != SIZE_MAX) {
                memcpy(out + m, cur + i, hit);
                m += hit;
                memcpy(out + m, st->to, st->n_to);
                m += st->n_to;
                i += hit + st->n_from;
                hit = tok_find(cur + i, len - i, st->from, st->n_from);
            }
            memcpy(out + m, cur + i, len - i);
            m += len - i;
            cur = out;
            len = m;
        }
    }
    *n_out = len;
    return cur;
}
