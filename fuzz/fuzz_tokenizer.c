/*
 * fuzz_tokenizer.c: the GPT-2 tokenizer (src/tokenizer/) on arbitrary input, with the real
 * 50,257-token vocabulary of tests/data/gpt2-tiny-random.
 *
 * The first byte picks the mode:
 *   even: encode the rest as text (with and without special-token parsing). Valid UTF-8 must
 *         encode and round-trip exactly (decode(encode(s)) == s); invalid UTF-8 must be refused.
 *   odd:  decode the rest as little-endian 16-bit ids (mod the vocabulary): the streaming
 *         decoder's pieces are each valid UTF-8 and concatenate to the whole decode, which is
 *         valid UTF-8 too.
 * libFuzzer's slow-unit timeout catches quadratic behaviour on long pre-tokens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/tokenizer.h>

#include "fuzz.h"
#include "sbuf.h"

static struct tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char err[512];
    const char *dir = fuzz_tiny_model_dir();
    tok = tokenizer_load(dir, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s (set GPTD_TESTDATA_DIR)\n", dir, err);
        abort();
    }
    return 0;
}

static void fuzz_encode(const char *text, size_t len) {
    bool is_valid = utf8_is_valid(text, len);
    for (int flags = 0; flags <= TOKENIZER_PARSE_SPECIAL; flags += TOKENIZER_PARSE_SPECIAL) {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        char err[256];
        int rc = tokenizer_encode(tok, text, len, flags, &ids, &n_ids, err, sizeof(err));
        FUZZ_CHECK((rc == 0) == is_valid);
        if (rc != 0) {
            continue;
        }
        FUZZ_CHECK(n_ids <= len);
        size_t out_len = 0;
        char *out = tokenizer_decode(tok, ids, n_ids, &out_len);
        FUZZ_CHECK(out != NULL);
        FUZZ_CHECK(out_len == len && memcmp(out, text, len) == 0);
        free(out);
        free(ids);
    }
}

static void fuzz_decode(const uint8_t *data, size_t size) {
    size_t n_ids = size / 2;
    int32_t *ids = malloc((n_ids + 1) * sizeof(int32_t));
    int32_t n_vocab = tokenizer_n_vocab(tok);
    for (size_t i = 0; i < n_ids; i++) {
        ids[i] = (int32_t)((data[2 * i] | (data[2 * i + 1] << 8)) % n_vocab);
    }
    size_t whole_len = 0;
    char *whole = tokenizer_decode(tok, ids, n_ids, &whole_len);
    FUZZ_CHECK(whole != NULL);
    FUZZ_CHECK(utf8_is_valid(whole, whole_len));
    size_t cap = tokenizer_max_token_bytes(tok) + 16;
    char *piece = malloc(cap);
    struct detok d;
    detok_init(&d, tok);
    size_t off = 0;
    for (size_t i = 0; i <= n_ids; i++) {
        size_t n = i < n_ids ? detok_feed(&d, ids[i], piece, cap) : detok_flush(&d, piece, cap);
        FUZZ_CHECK(n <= cap);
        FUZZ_CHECK(utf8_is_valid(piece, n));
        FUZZ_CHECK(off + n <= whole_len && memcmp(whole + off, piece, n) == 0);
        off += n;
    }
    FUZZ_CHECK(off == whole_len);
    free(piece);
    free(whole);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) {
        return 0;
    }
    if (data[0] % 2 == 0) {
        fuzz_encode((const char *)data + 1, size - 1);
    } else {
        fuzz_decode(data + 1, size - 1);
    }
    return 0;
}
