/*
 * tests/model_common.h: what the model suites share (test_kernels.c, test_model_loader.c,
 * test_model_forward.c): reference float16 / bfloat16 conversions written independently of
 * src/model, max_abs_diff and argmax, and the golden fixture: the 7 prompts of
 * gpt2-tiny-random's golden/forward.json with transformers' greedy ids, the model loaded per
 * test, and run_alone, which runs one prompt by itself.
 *
 * The fixture's state is in static globals: include this header from one .c file per binary.
 */
#ifndef GPTD_TESTS_MODEL_COMMON_H
#define GPTD_TESTS_MODEL_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>

#include "common.h"

/* ---- float16 / bfloat16, round to nearest even ---- */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline uint16_t to_bf16(float f) {
    uint32_t u = f32_bits(f);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static inline uint16_t to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = u & 0x7fffff;
    if (exp >= 31) {
        return (uint16_t)(sign | 0x7c00);
    }
    if (exp <= 0) {
        if (exp < -10) {
            return (uint16_t)sign;
        }
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) {
            half++;
        }
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) {
        half++; /* may carry into the exponent, which is still right */
    }
    return (uint16_t)(sign | half);
}

static inline float from_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = (float)mant * (1.0f / 16777216.0f);
        uint32_t b = f32_bits(f) | sign;
        memcpy(&f, &b, 4);
        return f;
    }
    uint32_t b = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                           : (sign | ((exp + 112) << 23) | (mant << 13));
    memcpy(&f, &b, 4);
    return f;
}

static inline float tt_round_f16(float f) {
    return from_f16(to_f16(f));
}

static inline float tt_round_bf16(float f) {
    uint32_t b = (uint32_t)to_bf16(f) << 16;
    float out;
    memcpy(&out, &b, 4);
    return out;
}

/* ---- comparing logits ---- */

static inline int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

static inline float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

/* ---- the tiny golden model ---- */

#define N_PROMPTS  7
#define N_GREEDY   48
#define MAX_PROMPT 512

struct golden_prompt {
    int32_t ids[MAX_PROMPT];
    int32_t n_ids;
    int32_t greedy[N_GREEDY];
    char last_logits_file[256];
};

static char g_model_dir[512];
static struct golden_prompt g_prompts[N_PROMPTS];
static struct model *g_model;
static int32_t g_vocab;
static int g_n_greedy = N_GREEDY;
static enum kv_dtype g_kv_dtype = KV_DTYPE_F32; /* of the caches run_alone and the batch use */

static inline void read_golden(void) {
    tiny_model_dir(g_model_dir, sizeof(g_model_dir));
    cJSON *root = read_golden_json("forward.json");
    const cJSON *prompts = cJSON_GetObjectItem(root, "prompts");
    ck_assert_int_eq(cJSON_GetArraySize(prompts), N_PROMPTS);
    for (int i = 0; i < N_PROMPTS; i++) {
        const cJSON *p = cJSON_GetArrayItem(prompts, i);
        struct golden_prompt *g = &g_prompts[i];
        const cJSON *ids = cJSON_GetObjectItem(p, "prompt_ids");
        g->n_ids = cJSON_GetArraySize(ids);
        ck_assert_int_le(g->n_ids, MAX_PROMPT);
        for (int j = 0; j < g->n_ids; j++) {
            g->ids[j] = (int32_t)cJSON_GetArrayItem(ids, j)->valuedouble;
        }
        const cJSON *greedy = cJSON_GetObjectItem(p, "greedy_ids");
        ck_assert_int_eq(cJSON_GetArraySize(greedy), N_GREEDY);
        for (int j = 0; j < N_GREEDY; j++) {
            g->greedy[j] = (int32_t)cJSON_GetArrayItem(greedy, j)->valuedouble;
        }
        snprintf(g->last_logits_file, sizeof(g->last_logits_file), "%s",
                 cJSON_GetObjectItem(p, "last_logits_file")->valuestring);
    }
    cJSON_Delete(root);
}

static inline void fixture_setup(void) {
    read_golden();
    g_model = load_tiny_model(NULL);
    g_vocab = model_get_config(g_model)->n_vocab;
    /* valgrind runs ~50x slower: fewer greedy steps, the same assertions on each. */
    g_n_greedy = under_valgrind() ? 6 : N_GREEDY;
}

static inline void fixture_teardown(void) {
    model_destroy(g_model);
    g_model = NULL;
}

/*
 * Runs one prompt alone: prefill in one call, then greedy decode steps until n_steps ids are
 * chosen. Writes the n_steps logit rows (prefill's last row first) into logits and the ids into
 * ids.
 */
static inline void run_alone(struct model *model, const int32_t *prompt, int32_t n_prompt,
                             int32_t n_steps, float *logits, int32_t *ids) {
    const struct model_config *cfg = model_get_config(model);
    char err[256];
    struct kv_cache *kv = kv_cache_create_with(model, 4u << 20, g_kv_dtype, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    struct model_scratch *scratch = model_scratch_create(model, MAX_PROMPT, 1);
    ck_assert_ptr_nonnull(scratch);
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, n_prompt), KV_OK);
    struct model_batch_seq b = {.kv = &seq, .tokens = prompt, .n_tokens = n_prompt, .n_logits = 1};
    ck_assert_int_eq(model_forward(model, kv, scratch, &b, 1, logits), 0);
    for (int32_t s = 0; s < n_steps; s++) {
        int32_t next = argmax(logits + (size_t)s * cfg->n_vocab, cfg->n_vocab);
        ids[s] = next;
        if (s + 1 == n_steps) {
            break;
        }
        ck_assert_int_eq(kv_seq_reserve(kv, &seq, 1), KV_OK);
        struct model_batch_seq d = {.kv = &seq, .tokens = &ids[s], .n_tokens = 1, .n_logits = 1};
        ck_assert_int_eq(
            model_forward(model, kv, scratch, &d, 1, logits + (size_t)(s + 1) * cfg->n_vocab), 0);
    }
    kv_seq_finish(kv, &seq);
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}

#endif
