/*
 * fuzz_request.c: the /v1/completions, /tokenize and /detokenize body parsers and validators
 * (src/server/request.c) on arbitrary bytes. Invariants: never a crash or leak; an accepted
 * request satisfies every documented bound; a refused one has a 4xx status and a message that is
 * valid UTF-8 (request bytes are never echoed).
 */
#include <stdlib.h>
#include <string.h>

#include <gptd/sampling.h>

#include "fuzz.h"
#include "request.h"
#include "sbuf.h"

static void check_error(const struct api_error *e) {
    FUZZ_CHECK(e->status >= 400 && e->status < 500);
    FUZZ_CHECK(e->type != NULL);
    size_t len = strnlen(e->message, sizeof(e->message));
    FUZZ_CHECK(len < sizeof(e->message));
    FUZZ_CHECK(utf8_is_valid(e->message, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *body = (const char *)data;
    struct request_limits lim;
    server_request_limits_init_default(&lim);
    lim.n_vocab = 50257;
    lim.n_ctx = 1024;
    lim.max_token_bytes = 128;
    struct completion_request r;
    struct api_error err;
    server_request_init(&r);
    if (server_request_parse_completion(body, size, &lim, "gpt2", &r, &err) == 0) {
        FUZZ_CHECK(r.n_prompts >= 1 && r.n_prompts <= (size_t)lim.max_prompts);
        FUZZ_CHECK(r.n >= 1 && r.best_of >= r.n && r.best_of <= lim.max_n);
        FUZZ_CHECK(r.max_tokens >= 0 && r.max_tokens <= lim.n_ctx);
        FUZZ_CHECK(r.max_tokens > 0 || r.echo);
        const char *param = NULL;
        FUZZ_CHECK(sampling_params_validate(&r.sampling, lim.n_vocab, &param, NULL, 0) == 0);
        for (size_t i = 0; i < r.n_prompts; i++) {
            const struct prompt *p = &r.prompts[i];
            FUZZ_CHECK(p->text != NULL || p->n_ids > 0);
            if (p->text != NULL) {
                FUZZ_CHECK(utf8_is_valid(p->text, p->text_len));
                FUZZ_CHECK(strlen(p->text) == p->text_len);
            }
            for (size_t j = 0; j < p->n_ids; j++) {
                FUZZ_CHECK(p->ids[j] >= 0 && p->ids[j] < lim.n_vocab);
            }
        }
        server_request_finish(&r);
    } else {
        check_error(&err);
    }

    char *text = NULL;
    size_t text_len = 0;
    bool add_special;
    if (server_request_parse_tokenize(body, size, &text, &text_len, &add_special, &err) == 0) {
        FUZZ_CHECK(utf8_is_valid(text, text_len));
        free(text);
    } else {
        check_error(&err);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (server_request_parse_detokenize(body, size, &lim, &ids, &n_ids, &err) == 0) {
        for (size_t i = 0; i < n_ids; i++) {
            FUZZ_CHECK(ids[i] >= 0 && ids[i] < lim.n_vocab);
        }
        free(ids);
    } else {
        check_error(&err);
    }
    return 0;
}
