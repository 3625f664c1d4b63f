/*
 * fuzz_stream.c: the text path of a streamed completion — the tokenizer's streaming decoder,
 * the stop-string matcher with its holdback, and the JSON string writer of the SSE chunks — on
 * arbitrary token ids and stop strings.
 *
 * Input: byte 0 = number of stop strings (mod 4); for each, a length byte (1..16) and its bytes
 * (kept only when valid UTF-8); the rest = little-endian 16-bit token ids (mod the vocabulary).
 * Invariants (the streaming guarantee of issue 5): every released piece is valid UTF-8 and
 * survives the JSON writer and a JSON parser unchanged; the pieces concatenate to the whole
 * decode cut right before the earliest-completing stop string (the longest at a tie), or to the
 * whole decode when none matches.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include <gptd/sampling.h>
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
        fprintf(stderr, "fuzz_stream: %s: %s (set GPTD_TESTDATA_DIR)\n", dir, err);
        abort();
    }
    return 0;
}

/* The reference cut: the end of the earliest-completing match (longest at a tie), or -1. */
static long reference_cut(const char *text, size_t len, const struct sampling_params *p) {
    for (size_t end = 1; end <= len; end++) {
        long best = -1;
        size_t best_len = 0;
        for (int32_t i = 0; i < p->n_stop; i++) {
            size_t n = strlen(p->stop[i]);
            if (n <= end && n > best_len && memcmp(text + end - n, p->stop[i], n) == 0) {
                best = (long)(end - n);
                best_len = n;
            }
        }
        if (best >= 0) {
            return best;
        }
    }
    return -1;
}

static void check_json_roundtrip(const char *piece, size_t len) {
    struct sbuf b;
    sbuf_init(&b);
    sbuf_json_string(&b, piece, len);
    FUZZ_CHECK(!sbuf_failed(&b));
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    FUZZ_CHECK(cJSON_IsString(j));
    /* cJSON stops at an embedded NUL; the decoder emits none for ids of the GPT-2 vocabulary
     * except the NUL byte token itself, so compare up to the first NUL. */
    size_t cmp = strnlen(piece, len);
    FUZZ_CHECK(strlen(j->valuestring) == cmp && memcmp(j->valuestring, piece, cmp) == 0);
    cJSON_Delete(j);
    sbuf_finish(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) {
        return 0;
    }
    struct sampling_params *p = malloc(sizeof(*p));
    sampling_params_init_default(p);
    size_t pos = 1;
    int n_stop = data[0] % 4;
    for (int i = 0; i < n_stop && pos < size; i++) {
        size_t n = (size_t)(data[pos++] % 16) + 1;
        if (pos + n > size) {
            break;
        }
        if (utf8_is_valid((const char *)data + pos, n) && memchr(data + pos, 0, n) == NULL) {
            sampling_params_add_stop(p, (const char *)data + pos, n);
        }
        pos += n;
    }
    size_t n_ids = (size - pos) / 2;
    int32_t *ids = malloc((n_ids + 1) * sizeof(int32_t));
    for (size_t i = 0; i < n_ids; i++) {
        ids[i] =
            (int32_t)((data[pos + 2 * i] | (data[pos + 2 * i + 1] << 8)) % tokenizer_n_vocab(tok));
    }
    size_t whole_len = 0;
    char *whole = tokenizer_decode(tok, ids, n_ids, &whole_len);
    long cut = reference_cut(whole, whole_len, p);
    size_t want_len = cut >= 0 ? (size_t)cut : whole_len;

    struct stop_matcher *m = stop_matcher_create(p);
    FUZZ_CHECK(m != NULL);
    struct detok d;
    detok_init(&d, tok);
    size_t cap = tokenizer_max_token_bytes(tok) + 16;
    char *piece = malloc(cap);
    char *got = malloc(whole_len + 1);
    size_t got_len = 0;
    struct stop_output out;
    for (size_t i = 0; i <= n_ids && !stop_matcher_is_stopped(m); i++) {
        size_t n = i < n_ids ? detok_feed(&d, ids[i], piece, cap) : detok_flush(&d, piece, cap);
        if (n == 0) {
            continue;
        }
        FUZZ_CHECK(stop_matcher_push(m, piece, n, true, &out) == 0);
        FUZZ_CHECK(utf8_is_valid(out.text, out.len));
        FUZZ_CHECK(got_len + out.len <= whole_len);
        memcpy(got + got_len, out.text, out.len);
        got_len += out.len;
        check_json_roundtrip(out.text, out.len);
    }
    if (!stop_matcher_is_stopped(m)) {
        stop_matcher_finish(m, &out);
        FUZZ_CHECK(utf8_is_valid(out.text, out.len));
        FUZZ_CHECK(got_len + out.len <= whole_len);
        memcpy(got + got_len, out.text, out.len);
        got_len += out.len;
    }
    FUZZ_CHECK(got_len == want_len && memcmp(got, whole, want_len) == 0);
    FUZZ_CHECK(stop_matcher_is_stopped(m) == (cut >= 0));
    stop_matcher_destroy(m);
    free(got);
    free(piece);
    free(whole);
    free(ids);
    free(p);
    return 0;
}
