/*
 * tests/tokenizer_common.h: helpers the two tokenizer suites (test_tokenizer.c for GPT-2's
 * loaders and edge cases, test_tokenizer_families.c for the Llama-family goldens) share:
 * UTF-8 writing, encoding that must succeed, and streamed decoding through struct detok.
 */
#ifndef GPTD_TESTS_TOKENIZER_COMMON_H
#define GPTD_TESTS_TOKENIZER_COMMON_H

#include <stdint.h>
#include <stdlib.h>

#include <check.h>

#include <gptd/tokenizer.h>

/* Appends code point cp as UTF-8; returns the bytes written (1..4). */
static inline size_t put_utf8(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Encodes text[0..n) with flags; the test fails unless it succeeds. The caller frees. */
static inline int32_t *encode_ok(struct tokenizer *tok, const char *text, size_t n, int flags,
                                 size_t *n_ids) {
    int32_t *ids = NULL;
    char err[256] = "";
    int rc = tokenizer_encode(tok, text, n, flags, &ids, n_ids, err, sizeof(err));
    ck_assert_msg(rc == 0, "encode failed: %s", err);
    ck_assert_ptr_nonnull(ids);
    return ids;
}

/* Streams ids through a detok started with flags, one id at a time, into a malloc'd buffer of
 * *n_out bytes (the caller frees). */
static inline char *stream_decode_with(const struct tokenizer *tok, const int32_t *ids,
                                       size_t n_ids, int flags, size_t *n_out) {
    size_t cap_piece = tokenizer_max_token_bytes(tok) + 16;
    size_t cap = (n_ids + 1) * cap_piece;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    size_t at = 0;
    struct detok d;
    detok_init_with(&d, tok, flags);
    for (size_t i = 0; i < n_ids; i++) {
        at += detok_feed(&d, ids[i], out + at, cap_piece);
    }
    at += detok_flush(&d, out + at, cap_piece);
    ck_assert_uint_le(at, cap);
    *n_out = at;
    return out;
}

#endif
