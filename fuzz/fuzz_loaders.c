/*
 * fuzz_loaders.c: the model's config.json parser and the tokenizer's file loaders on arbitrary
 * bytes. The first byte picks the target:
 *   0: config.json (config_parse, in memory);
 *   1: tokenizer.json (tokenizer_load of a directory holding only it);
 *   2: vocab.json + merges.txt (the rest split at its first NUL byte).
 * Invariants: never a crash or a leak; a refusal always comes with a message; an accepted
 * config is within the documented ranges; an accepted tokenizer (byte-level or
 * SentencePiece-style) encodes a mixed text with its special tokens or says why not, and its
 * streamed decode equals the whole decode in every decode mode.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gptd/tokenizer.h>

#include "config.h"
#include "fuzz.h"

static void try_tokenizer(void) {
    char err[512];
    err[0] = '\0';
    struct tokenizer *tok = tokenizer_load(fuzz_temp_dir(), err, sizeof(err));
    if (tok == NULL) {
        FUZZ_CHECK(strlen(err) > 0);
        return;
    }
    FUZZ_CHECK(tokenizer_n_vocab(tok) > 0);
    static const char text[] = "Hello, world!  <s> caf\xc3\xa9 e\xcc\x81 \xf0\x9f\xa6\x99";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (tokenizer_encode(tok, text, sizeof(text) - 1,
                         TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_SPECIAL, &ids, &n_ids, err,
                         sizeof(err)) == 0) {
        /* Every decode mode: the streamed text equals the whole decode. */
        size_t cap = tokenizer_max_token_bytes(tok) + 16;
        char *piece = malloc(cap);
        for (int flags = 0; flags <= (TOKENIZER_SKIP_SPECIAL | TOKENIZER_CONTINUATION); flags++) {
            size_t len = 0;
            char *whole = tokenizer_decode_with(tok, ids, n_ids, flags, &len);
            struct detok d;
            detok_init_with(&d, tok, flags);
            size_t at = 0;
            for (size_t i = 0; i <= n_ids && whole != NULL && piece != NULL; i++) {
                size_t m =
                    i < n_ids ? detok_feed(&d, ids[i], piece, cap) : detok_flush(&d, piece, cap);
                FUZZ_CHECK(at + m <= len && memcmp(whole + at, piece, m) == 0);
                at += m;
            }
            FUZZ_CHECK(whole == NULL || piece == NULL || at == len);
            free(whole);
        }
        free(piece);
        free(ids);
    } else {
        FUZZ_CHECK(strlen(err) > 0);
    }
    tokenizer_destroy(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) {
        return 0;
    }
    const uint8_t *rest = data + 1;
    size_t n = size - 1;
    char path[512];
    switch (data[0] % 3) {
    case 0: {
        struct model_config_ext cfg;
        char err[512];
        err[0] = '\0';
        if (config_parse((const char *)rest, n, "config.json", &cfg, err, sizeof(err)) == 0) {
            FUZZ_CHECK(cfg.config.n_layer > 0 && cfg.config.n_head > 0);
            FUZZ_CHECK(cfg.config.n_embd % cfg.config.n_head == 0);
            FUZZ_CHECK(cfg.config.n_vocab > 0 && cfg.config.n_ctx > 0);
        } else {
            FUZZ_CHECK(strlen(err) > 0);
        }
        break;
    }
    case 1:
        snprintf(path, sizeof(path), "%s/vocab.json", fuzz_temp_dir());
        unlink(path);
        fuzz_write_temp("tokenizer.json", rest, n);
        try_tokenizer();
        break;
    default: {
        snprintf(path, sizeof(path), "%s/tokenizer.json", fuzz_temp_dir());
        unlink(path);
        const uint8_t *nul = memchr(rest, 0, n);
        size_t n_vocab = nul != NULL ? (size_t)(nul - rest) : n;
        fuzz_write_temp("vocab.json", rest, n_vocab);
        fuzz_write_temp("merges.txt", nul != NULL ? nul + 1 : rest + n,
                        nul != NULL ? n - n_vocab - 1 : 0);
        try_tokenizer();
        break;
    }
    }
    return 0;
}
