/*
 * sampling_params.c: defaults, the fixed-array fillers and validation of struct sampling_params.
 *
 * Called by the HTTP layer while it parses a request (any HTTP thread) and by the CLI; pure
 * functions of their arguments, so any thread. Validation returns the request's field name so
 * that the server can answer a 400 whose "param" points at the culprit.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <gptd/sampling.h>

void sampling_params_init_default(struct sampling_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->has_seed = false;
    p->max_tokens = 16;
    p->min_tokens = 0;
    p->ignore_eos = false;
    p->logprobs = -1;
    p->candidates = 0;
}

int sampling_params_add_stop(struct sampling_params *p, const char *s, size_t len) {
    if (p->n_stop >= SAMPLING_MAX_STOP || len == 0 || len > SAMPLING_MAX_STOP_BYTES) {
        return -1;
    }
    memcpy(p->stop[p->n_stop], s, len);
    p->stop[p->n_stop][len] = '\0';
    p->n_stop++;
    return 0;
}

int sampling_params_add_stop_token_id(struct sampling_params *p, int32_t token_id) {
    if (p->n_stop_token_ids >= SAMPLING_MAX_STOP_TOKEN_IDS) {
        return -1;
    }
    p->stop_token_ids[p->n_stop_token_ids++] = token_id;
    return 0;
}

int sampling_params_add_logit_bias(struct sampling_params *p, int32_t token_id, float bias) {
    if (p->n_logit_bias >= SAMPLING_MAX_LOGIT_BIAS) {
        return -1;
    }
    p->logit_bias[p->n_logit_bias].token_id = token_id;
    p->logit_bias[p->n_logit_bias].bias = bias;
    p->n_logit_bias++;
    return 0;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool is_valid_utf8(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n >= len) { /* truncated sequence */
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

/* Sets *param and msg; returns -1 so that callers can `return fail(...)`. */
__attribute__((format(printf, 5, 6))) static int
fail(const char **param, const char *name, char *msg, size_t msg_size, const char *fmt, ...) {
    if (param != NULL) {
        *param = name;
    }
    if (msg != NULL && msg_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msg_size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* !(lo <= x && x <= hi) is true for NaN too, which is the point. */
static bool in_range(float x, float lo, float hi) {
    return lo <= x && x <= hi;
}

int sampling_params_validate(const struct sampling_params *p, int32_t n_vocab, const char **param,
                             char *msg, size_t msg_size) {
    if (!in_range(p->temperature, 0.0f, 2.0f)) {
        return fail(param, "temperature", msg, msg_size, "temperature must be in [0, 2], got %g",
                    (double)p->temperature);
    }
    if (p->top_k < -1) {
        return fail(param, "top_k", msg, msg_size,
                    "top_k must be -1 or 0 (off) or at least 1, got %d", (int)p->top_k);
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        return fail(param, "top_p", msg, msg_size, "top_p must be in (0, 1], got %g",
                    (double)p->top_p);
    }
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f)) {
        return fail(param, "min_p", msg, msg_size, "min_p must be in [0, 1), got %g",
                    (double)p->min_p);
    }
    /* An upper bound keeps logit * r finite; 10 is far past anything useful (1.0-1.5). */
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f)) {
        return fail(param, "repetition_penalty", msg, msg_size,
                    "repetition_penalty must be in (0, 10], got %g", (double)p->repetition_penalty);
    }
    if (!in_range(p->presence_penalty, -2.0f, 2.0f)) {
        return fail(param, "presence_penalty", msg, msg_size,
                    "presence_penalty must be in [-2, 2], got %g", (double)p->presence_penalty);
    }
    if (!in_range(p->frequency_penalty, -2.0f, 2.0f)) {
        return fail(param, "frequency_penalty", msg, msg_size,
                    "frequency_penalty must be in [-2, 2], got %g", (double)p->frequency_penalty);
    }
    if (p->n_logit_bias < 0 || p->n_logit_bias > SAMPLING_MAX_LOGIT_BIAS) {
        return fail(param, "logit_bias", msg, msg_size, "logit_bias may hold at most %d entries",
                    SAMPLING_MAX_LOGIT_BIAS);
    }
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const struct sampling_logit_bias *b = &p->logit_bias[i];
        if (b->token_id < 0 || b->token_id >= n_vocab) {
            return fail(param, "logit_bias", msg, msg_size,
                        "logit_bias token id %d is outside the vocabulary [0, %d)",
                        (int)b->token_id, (int)n_vocab);
        }
        if (!in_range(b->bias, -100.0f, 100.0f)) {
            return fail(param, "logit_bias", msg, msg_size,
                        "logit_bias value for token %d must be in [-100, 100], got %g",
                        (int)b->token_id, (double)b->bias);
        }
        /* At most 300 entries: the quadratic check costs less than a hash set. */
        for (int32_t j = 0; j < i; j++) {
            if (p->logit_bias[j].token_id == b->token_id) {
                return fail(param, "logit_bias", msg, msg_size, "logit_bias lists token %d twice",
                            (int)b->token_id);
            }
        }
    }
    if (p->max_tokens < 1) {
        return fail(param, "max_tokens", msg, msg_size, "max_tokens must be at least 1, got %d",
                    (int)p->max_tokens);
    }
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens) {
        return fail(param, "min_tokens", msg, msg_size,
                    "min_tokens must be in [0, max_tokens = %d], got %d", (int)p->max_tokens,
                    (int)p->min_tokens);
    }
    if (p->n_stop < 0 || p->n_stop > SAMPLING_MAX_STOP) {
        return fail(param, "stop", msg, msg_size, "stop may hold at most %d strings",
                    SAMPLING_MAX_STOP);
    }
    for (int32_t i = 0; i < p->n_stop; i++) {
        size_t len = strnlen(p->stop[i], SAMPLING_MAX_STOP_BYTES + 1);
        if (len == 0 || len > SAMPLING_MAX_STOP_BYTES) {
            return fail(param, "stop", msg, msg_size, "each stop string must be 1 to %d bytes long",
                        SAMPLING_MAX_STOP_BYTES);
        }
        if (!is_valid_utf8((const unsigned char *)p->stop[i], len)) {
            return fail(param, "stop", msg, msg_size, "stop string %d is not valid UTF-8", (int)i);
        }
    }
    if (p->n_stop_token_ids < 0 || p->n_stop_token_ids > SAMPLING_MAX_STOP_TOKEN_IDS) {
        return fail(param, "stop_token_ids", msg, msg_size,
                    "stop_token_ids may hold at most %d ids", SAMPLING_MAX_STOP_TOKEN_IDS);
    }
    for (int32_t i = 0; i < p->n_stop_token_ids; i++) {
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= n_vocab) {
            return fail(param, "stop_token_ids", msg, msg_size,
                        "stop token id %d is outside the vocabulary [0, %d)",
                        (int)p->stop_token_ids[i], (int)n_vocab);
        }
    }
    if (p->logprobs < -1 || p->logprobs > SAMPLING_MAX_LOGPROBS) {
        return fail(param, "logprobs", msg, msg_size, "logprobs must be in [0, %d], got %d",
                    SAMPLING_MAX_LOGPROBS, (int)p->logprobs);
    }
    if (p->candidates < 0 || p->candidates > SAMPLING_MAX_CANDIDATES) {
        return fail(param, "candidates", msg, msg_size, "candidates must be in [0, %d], got %d",
                    SAMPLING_MAX_CANDIDATES, (int)p->candidates);
    }
    return 0;
}
