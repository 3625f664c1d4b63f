/*
 * test_model_llama.c: Check suite for the Llama-family forward pass (src/model/arch_llama.c)
 * against references.
 *
 *   test_model_llama [STORIES15M_DIR]
 *
 * Always: the three tiny variants of tests/data/llama-tiny (GQA with biases and llama3 rope
 * scaling; Qwen2 MQA with head_dim given, tied, linear scaling; Mistral's sliding window)
 * against tools/make-tiny-llama's PyTorch reference: configs, every prompt position's logits
 * within 1e-4, greedy tokens through the KV cache, batches bit-identical to alone, f16 KV.
 *
 * With STORIES15M_DIR (karpathy's stories15M converted by tools/convert-llama2c;
 * tests/test_stories15M.sh fetches, converts and runs this): checked against llama2.c's own run
 * (tests/data/stories15M/expected.json): for each of three prompts, 48 greedy tokens equal and,
 * at every step, the five logits llama2.c reported within 1e-3; the three prompts as one ragged
 * batch bit-identical to each alone; 16-bit weights and an f16 KV cache keep the first tokens.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cjson/cJSON.h>

#include <gptd/model.h>

#include "common.h"

#define N_CASES    3
#define N_STEPS    48
#define MAX_PROMPT 16

struct llama_case {
    int32_t prompt[MAX_PROMPT];
    int32_t n_prompt;
    int32_t ids[N_STEPS];
    int32_t top_id[N_STEPS][5];
    float top_logit[N_STEPS][5];
};

static const char *g_dir;
static struct llama_case g_cases[N_CASES];
static int g_have_cases;

/* Reads expected.json once (in the first test that needs it: ck_assert works only in tests). */
static void read_expected(void) {
    if (g_have_cases) {
        return;
    }
    char path[1024];
    testdata_path(path, sizeof(path), "stories15M/expected.json");
    char *text = read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    ck_assert_int_eq(cJSON_GetArraySize(cases), N_CASES);
    for (int c = 0; c < N_CASES; c++) {
        const cJSON *jc = cJSON_GetArrayItem(cases, c);
        struct llama_case *lc = &g_cases[c];
        const cJSON *it;
        lc->n_prompt = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(jc, "prompt_ids")) {
            ck_assert_int_lt(lc->n_prompt, MAX_PROMPT);
            lc->prompt[lc->n_prompt++] = (int32_t)it->valuedouble;
        }
        int n = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(jc, "ids")) {
            ck_assert_int_lt(n, N_STEPS);
            lc->ids[n++] = (int32_t)it->valuedouble;
        }
        ck_assert_int_eq(n, N_STEPS);
        n = 0;
        const cJSON *step;
        cJSON_ArrayForEach(step, cJSON_GetObjectItemCaseSensitive(jc, "top5 [id, logit]")) {
            ck_assert_int_lt(n, N_STEPS);
            for (int k = 0; k < 5; k++) {
                const cJSON *pair = cJSON_GetArrayItem(step, k);
                lc->top_id[n][k] = (int32_t)cJSON_GetArrayItem(pair, 0)->valuedouble;
                lc->top_logit[n][k] = (float)cJSON_GetArrayItem(pair, 1)->valuedouble;
            }
            n++;
        }
        ck_assert_int_eq(n, N_STEPS);
    }
    cJSON_Delete(root);
    g_have_cases = 1;
}

static struct model *load(enum model_weights weights) {
    read_expected();
    char err[512] = "";
    struct model *m = model_load_with(g_dir, weights, err, sizeof(err));
    ck_assert_msg(m != NULL, "model_load %s: %s", g_dir, err);
    return m;
}

/* Greedy decoding of case c alone; logits of every step into out (N_STEPS, V), tokens into
 * ids. */
static void decode_alone(struct model *m, enum kv_dtype kv_dtype, const struct llama_case *c,
                         int32_t n_steps, float *out, int32_t *ids) {
    const struct model_config *cfg = model_get_config(m);
    char err[256];
    struct kv_cache *kv = kv_cache_create_with(m, (size_t)8 << 20, kv_dtype, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    struct model_scratch *s = model_scratch_create(m, MAX_PROMPT, 1);
    struct kv_seq seq = {0};
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    const int32_t *toks = c->prompt;
    int32_t n = c->n_prompt;
    for (int32_t t = 0; t < n_steps; t++) {
        ck_assert_int_eq(kv_seq_reserve(kv, &seq, n), KV_OK);
        struct model_batch_seq b = {.kv = &seq, .tokens = toks, .n_tokens = n, .n_logits = 1};
        float *row = out + (size_t)t * cfg->n_vocab;
        ck_assert_int_eq(model_forward(m, kv, s, &b, 1, row), 0);
        int32_t best = 0;
        for (int32_t v = 1; v < cfg->n_vocab; v++) {
            best = row[v] > row[best] ? v : best;
        }
        ids[t] = best;
        toks = &ids[t];
        n = 1;
    }
    kv_seq_finish(kv, &seq);
    model_scratch_destroy(s);
    kv_cache_destroy(kv);
}

START_TEST(test_stories15M_matches_llama2c) {
    struct model *m = load(MODEL_WEIGHTS_AUTO);
    const struct model_config *cfg = model_get_config(m);
    ck_assert_int_eq(cfg->arch, MODEL_ARCH_LLAMA);
    ck_assert_int_eq(cfg->n_vocab, 32000);
    float *logits = malloc((size_t)N_STEPS * cfg->n_vocab * sizeof(float));
    float worst = 0.0f;
    for (int c = 0; c < N_CASES; c++) {
        int32_t ids[N_STEPS];
        decode_alone(m, KV_DTYPE_F32, &g_cases[c], N_STEPS, logits, ids);
        for (int32_t t = 0; t < N_STEPS; t++) {
            ck_assert_msg(ids[t] == g_cases[c].ids[t], "case %d step %d: token %d, llama2.c %d", c,
                          t, ids[t], g_cases[c].ids[t]);
            for (int k = 0; k < 5; k++) {
                float got = logits[(size_t)t * cfg->n_vocab + g_cases[c].top_id[t][k]];
                float d = fabsf(got - g_cases[c].top_logit[t][k]);
                worst = d > worst ? d : worst;
                ck_assert_msg(d < 1e-3f, "case %d step %d: logit of %d is %.6f, llama2.c %.6f", c,
                              t, g_cases[c].top_id[t][k], got, g_cases[c].top_logit[t][k]);
            }
        }
    }
    fprintf(stderr, "stories15M: 3 x 48 greedy tokens equal, top-5 logits within %.2g\n", worst);
    free(logits);
    model_destroy(m);
}
END_TEST

/* The three prompts as one ragged batch, then decoded in lockstep: every logit row the same
 * bits as decoding each prompt alone. */
START_TEST(test_stories15M_batch_is_bit_identical) {
    struct model *m = load(MODEL_WEIGHTS_AUTO);
    const struct model_config *cfg = model_get_config(m);
    const int32_t n_steps = 12;
    size_t per = (size_t)n_steps * cfg->n_vocab;
    float *alone = malloc(N_CASES * per * sizeof(float));
    int32_t ids[N_CASES][N_STEPS];
    for (int c = 0; c < N_CASES; c++) {
        decode_alone(m, KV_DTYPE_F32, &g_cases[c], n_steps, alone + c * per, ids[c]);
    }
    char err[256];
    struct kv_cache *kv = kv_cache_create(m, (size_t)8 << 20, err, sizeof(err));
    struct model_scratch *s = model_scratch_create(m, N_CASES * MAX_PROMPT, N_CASES);
    struct kv_seq seqs[N_CASES];
    struct model_batch_seq b[N_CASES];
    float *rows = malloc(N_CASES * (size_t)cfg->n_vocab * sizeof(float));
    for (int c = 0; c < N_CASES; c++) {
        memset(&seqs[c], 0, sizeof(seqs[c]));
        ck_assert_int_eq(kv_seq_init(&seqs[c], kv), 0);
    }
    for (int32_t t = 0; t < n_steps; t++) {
        for (int c = 0; c < N_CASES; c++) {
            b[c].kv = &seqs[c];
            b[c].tokens = t == 0 ? g_cases[c].prompt : &ids[c][t - 1];
            b[c].n_tokens = t == 0 ? g_cases[c].n_prompt : 1;
            b[c].n_logits = 1;
            ck_assert_int_eq(kv_seq_reserve(kv, &seqs[c], b[c].n_tokens), KV_OK);
        }
        ck_assert_int_eq(model_forward(m, kv, s, b, N_CASES, rows), 0);
        for (int c = 0; c < N_CASES; c++) {
            ck_assert_mem_eq(rows + (size_t)c * cfg->n_vocab,
                             alone + c * per + (size_t)t * cfg->n_vocab,
                             (size_t)cfg->n_vocab * sizeof(float));
        }
    }
    for (int c = 0; c < N_CASES; c++) {
        kv_seq_finish(kv, &seqs[c]);
    }
    free(rows);
    free(alone);
    model_scratch_destroy(s);
    kv_cache_destroy(kv);
    model_destroy(m);
}
END_TEST

/* f16 / bf16 weights and an f16 KV cache round, so only the first tokens are compared (their
 * margins are wide), plus every logit within a loose bound of llama2.c's. */
START_TEST(test_stories15M_narrow_types_keep_first_tokens) {
    const struct {
        enum model_weights w;
        enum kv_dtype kv;
        float tol;
    } runs[] = {{MODEL_WEIGHTS_F16, KV_DTYPE_F32, 0.05f},
                {MODEL_WEIGHTS_BF16, KV_DTYPE_F32, 0.3f},
                {MODEL_WEIGHTS_AUTO, KV_DTYPE_F16, 0.05f}};
    const int32_t n_steps = 4;
    for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
        struct model *m = load(runs[r].w);
        const struct model_config *cfg = model_get_config(m);
        float *logits = malloc((size_t)n_steps * cfg->n_vocab * sizeof(float));
        int32_t ids[N_STEPS];
        decode_alone(m, runs[r].kv, &g_cases[0], n_steps, logits, ids);
        for (int32_t t = 0; t < n_steps; t++) {
            ck_assert_int_eq(ids[t], g_cases[0].ids[t]);
            for (int k = 0; k < 5; k++) {
                float got = logits[(size_t)t * cfg->n_vocab + g_cases[0].top_id[t][k]];
                ck_assert_msg(fabsf(got - g_cases[0].top_logit[t][k]) < runs[r].tol,
                              "run %zu step %d: %.4f vs %.4f", r, t, got,
                              g_cases[0].top_logit[t][k]);
            }
        }
        free(logits);
        model_destroy(m);
    }
}
END_TEST

/* ---- the tiny variants (tests/data/llama-tiny) against the PyTorch reference ---------- */

#define V_PROMPTS 3
#define V_GREEDY  12
#define V_MAX_T   17

struct variant_golden {
    int32_t prompt[V_PROMPTS][V_MAX_T];
    int32_t n_prompt[V_PROMPTS];
    int32_t greedy[V_PROMPTS][V_GREEDY];
};

static const char *const variant_names[] = {"llama-gqa", "qwen2-mqa", "mistral-sw"};

static void variant_dir(char *out, size_t n, int v) {
    char rel[128];
    snprintf(rel, sizeof(rel), "llama-tiny/%s", variant_names[v]);
    testdata_path(out, n, rel);
}

static void read_variant_golden(int v, struct variant_golden *g) {
    char dir[1024];
    char path[1200];
    variant_dir(dir, sizeof(dir), v);
    snprintf(path, sizeof(path), "%s/golden/golden.json", dir);
    char *text = read_file(path, NULL);
    ck_assert_msg(text != NULL, "cannot read %s", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(root, "prompts");
    ck_assert_int_eq(cJSON_GetArraySize(prompts), V_PROMPTS);
    for (int i = 0; i < V_PROMPTS; i++) {
        const cJSON *p = cJSON_GetArrayItem(prompts, i);
        const cJSON *it;
        int n = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "prompt_ids")) {
            ck_assert_int_lt(n, V_MAX_T);
            g->prompt[i][n++] = (int32_t)it->valuedouble;
        }
        g->n_prompt[i] = n;
        n = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(p, "greedy_ids")) {
            ck_assert_int_lt(n, V_GREEDY);
            g->greedy[i][n++] = (int32_t)it->valuedouble;
        }
        ck_assert_int_eq(n, V_GREEDY);
    }
    cJSON_Delete(root);
}

/* What each variant's config.json must have turned into. */
START_TEST(test_variant_configs) {
    char dir[1024];
    char err[512];
    const struct {
        int32_t n_kv_head, head_dim, n_ctx, n_eos;
        int32_t eos[4];
    } want[] = {{2, 16, 96, 3, {2, 3, 4}}, {1, 32, 64, 1, {255}}, {4, 16, 48, 1, {2}}};
    for (int v = 0; v < 3; v++) {
        variant_dir(dir, sizeof(dir), v);
        struct model *m = model_load(dir, err, sizeof(err));
        ck_assert_msg(m != NULL, "%s", err);
        const struct model_config *c = model_get_config(m);
        ck_assert_int_eq(c->arch, MODEL_ARCH_LLAMA);
        ck_assert_int_eq(c->n_head, 4);
        ck_assert_int_eq(c->n_kv_head, want[v].n_kv_head);
        ck_assert_int_eq(c->head_dim, want[v].head_dim);
        ck_assert_int_eq(c->n_ctx, want[v].n_ctx);
        ck_assert_int_eq(c->n_eos, want[v].n_eos);
        for (int i = 0; i < want[v].n_eos; i++) {
            ck_assert_int_eq(c->eos_token_ids[i], want[v].eos[i]);
        }
        ck_assert_int_eq(c->eos_token_id, want[v].eos[0]);
        model_destroy(m);
    }
}
END_TEST

/* Loop index = variant: every prompt position's logits within 1e-4 of the reference (one
 * prefill with logits for all rows), the 12 greedy tokens through the KV cache equal, and the
 * three prompts as one ragged batch bit-identical to each alone. */
START_TEST(test_variant_matches_reference) {
    int v = _i;
    char dir[1024];
    char err[512];
    variant_dir(dir, sizeof(dir), v);
    struct variant_golden g;
    read_variant_golden(v, &g);
    struct model *m = model_load(dir, err, sizeof(err));
    ck_assert_msg(m != NULL, "%s", err);
    const struct model_config *c = model_get_config(m);
    int32_t V = c->n_vocab;
    struct kv_cache *kv = kv_cache_create(m, (size_t)4 << 20, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    struct model_scratch *s = model_scratch_create(m, 3 * V_MAX_T, 3 * V_MAX_T);
    float *logits = malloc((size_t)3 * V_MAX_T * V * sizeof(float));
    float *alone = malloc((size_t)3 * V_MAX_T * V * sizeof(float));
    float worst = 0.0f;
    size_t at = 0;
    for (int i = 0; i < V_PROMPTS; i++) {
        int32_t T = g.n_prompt[i];
        char path[1300];
        snprintf(path, sizeof(path), "%s/golden/p%d_logits.f32", dir, i);
        size_t n_bytes = 0;
        char *want = read_file(path, &n_bytes);
        ck_assert_msg(want != NULL && n_bytes == (size_t)T * V * sizeof(float), "%s", path);
        struct kv_seq seq = {0};
        ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
        ck_assert_int_eq(kv_seq_reserve(kv, &seq, T), KV_OK);
        struct model_batch_seq b = {
            .kv = &seq, .tokens = g.prompt[i], .n_tokens = T, .n_logits = T};
        ck_assert_int_eq(model_forward(m, kv, s, &b, 1, alone + at), 0);
        for (size_t e = 0; e < (size_t)T * V; e++) {
            float ref;
            memcpy(&ref, want + e * sizeof(float), sizeof(float));
            float d = fabsf(alone[at + e] - ref);
            worst = d > worst ? d : worst;
            ck_assert_msg(d < 1e-4f + 1e-5f * fabsf(ref), "%s prompt %d logit %zu: %.7f vs %.7f",
                          variant_names[v], i, e, (double)alone[at + e], (double)ref);
        }
        free(want);
        /* Greedy through the cache: the prompt's last row was just computed. */
        int32_t tok = 0;
        const float *row = alone + at + (size_t)(T - 1) * V;
        for (int32_t t = 0; t < V_GREEDY; t++) {
            int32_t best = 0;
            for (int32_t e = 1; e < V; e++) {
                best = row[e] > row[best] ? e : best;
            }
            ck_assert_msg(best == g.greedy[i][t], "%s prompt %d step %d: %d, reference %d",
                          variant_names[v], i, t, best, g.greedy[i][t]);
            tok = best;
            ck_assert_int_eq(kv_seq_reserve(kv, &seq, 1), KV_OK);
            struct model_batch_seq d = {.kv = &seq, .tokens = &tok, .n_tokens = 1, .n_logits = 1};
            ck_assert_int_eq(model_forward(m, kv, s, &d, 1, logits), 0);
            row = logits;
        }
        kv_seq_finish(kv, &seq);
        at += (size_t)T * V;
    }
    /* All three prompts in one batch. */
    struct kv_seq seqs[V_PROMPTS];
    struct model_batch_seq b[V_PROMPTS];
    for (int i = 0; i < V_PROMPTS; i++) {
        memset(&seqs[i], 0, sizeof(seqs[i]));
        ck_assert_int_eq(kv_seq_init(&seqs[i], kv), 0);
        ck_assert_int_eq(kv_seq_reserve(kv, &seqs[i], g.n_prompt[i]), KV_OK);
        b[i] = (struct model_batch_seq){.kv = &seqs[i],
                                        .tokens = g.prompt[i],
                                        .n_tokens = g.n_prompt[i],
                                        .n_logits = g.n_prompt[i]};
    }
    ck_assert_int_eq(model_forward(m, kv, s, b, V_PROMPTS, logits), 0);
    ck_assert_int_eq(memcmp(logits, alone, at * sizeof(float)), 0);
    for (int i = 0; i < V_PROMPTS; i++) {
        kv_seq_finish(kv, &seqs[i]);
    }
    fprintf(stderr, "%s: logits within %.2g of the reference, greedy tokens equal\n",
            variant_names[v], (double)worst);
    free(logits);
    free(alone);
    model_scratch_destroy(s);
    kv_cache_destroy(kv);
    model_destroy(m);
}
END_TEST

/* The same with an f16 KV cache: K/V rounding moves logits by ~1e-3 at most here. */
START_TEST(test_variant_f16_kv_cache_close) {
    char dir[1024];
    char err[512];
    variant_dir(dir, sizeof(dir), 0);
    struct variant_golden g;
    read_variant_golden(0, &g);
    struct model *m = model_load(dir, err, sizeof(err));
    ck_assert_msg(m != NULL, "%s", err);
    int32_t V = model_get_config(m)->n_vocab;
    struct kv_cache *kv = kv_cache_create_with(m, (size_t)4 << 20, KV_DTYPE_F16, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    struct model_scratch *s = model_scratch_create(m, V_MAX_T, V_MAX_T);
    int32_t T = g.n_prompt[2];
    float *logits = malloc((size_t)T * V * sizeof(float));
    struct kv_seq seq = {0};
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, T), KV_OK);
    struct model_batch_seq b = {.kv = &seq, .tokens = g.prompt[2], .n_tokens = T, .n_logits = T};
    ck_assert_int_eq(model_forward(m, kv, s, &b, 1, logits), 0);
    char path[1300];
    snprintf(path, sizeof(path), "%s/golden/p2_logits.f32", dir);
    char *want = read_file(path, NULL);
    ck_assert_ptr_nonnull(want);
    for (size_t e = 0; e < (size_t)T * V; e++) {
        float ref;
        memcpy(&ref, want + e * sizeof(float), sizeof(float));
        ck_assert_float_le(fabsf(logits[e] - ref), 2e-2f);
    }
    free(want);
    kv_seq_finish(kv, &seq);
    free(logits);
    model_scratch_destroy(s);
    kv_cache_destroy(kv);
    model_destroy(m);
}
END_TEST

static Suite *llama_suite(void) {
    Suite *s = suite_create("model_llama");
    TCase *variants = tcase_create("variants");
    tcase_set_timeout(variants, 300);
    tcase_add_test(variants, test_variant_configs);
    tcase_add_loop_test(variants, test_variant_matches_reference, 0, 3);
    tcase_add_test(variants, test_variant_f16_kv_cache_close);
    suite_add_tcase(s, variants);
    if (g_dir != NULL) {
        TCase *tc = tcase_create("stories15M");
        tcase_set_timeout(tc, 600);
        tcase_add_test(tc, test_stories15M_matches_llama2c);
        tcase_add_test(tc, test_stories15M_batch_is_bit_identical);
        tcase_add_test(tc, test_stories15M_narrow_types_keep_first_tokens);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc > 2) {
        fprintf(stderr, "usage: test_model_llama [STORIES15M_DIR] (tests/test_stories15M.sh makes "
                        "it from tools/fetch-testdata's stories15M with tools/convert-llama2c)\n");
        return EXIT_FAILURE;
    }
    g_dir = argc == 2 ? argv[1] : NULL;
    SRunner *sr = srunner_create(llama_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
