/*
 * test_model_forward.c: the forward pass (src/model) of gpt2-tiny-random against Hugging Face
 * transformers' goldens (tests/data/gpt2-tiny-random/golden): the 7 prompts' last-position
 * logits and one prompt's logits at every position within 1e-4, and 48 greedy tokens each. A
 * ragged batch (staggered starts, chunked prefill mixed with decode steps) is bit-identical to
 * each sequence run alone, with a float32 and a float16 KV cache; the float16 cache stays close
 * to the goldens in half the bytes; a forked sequence matches a fresh run; model_forward refuses
 * malformed batches; and a thread count set after load keeps the logits.
 *
 * The golden fixture (prompts, model loaded per test) and run_alone are model_common.h's.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "model_common.h"

/* REL in the tiny model's folder (golden/..._logits.f32), as n floats. The caller frees it. */
static float *read_f32(const char *rel, size_t n) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", g_model_dir, rel);
    size_t len = 0;
    char *buf = read_file(path, &len);
    ck_assert_msg(buf != NULL, "cannot read %s", path);
    ck_assert_uint_eq(len, n * sizeof(float));
    return (float *)(void *)buf;
}

START_TEST(test_forward_last_logits_match_golden) {
    const struct golden_prompt *g = &g_prompts[_i];
    float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
    float *got = malloc((size_t)g_vocab * sizeof(float));
    int32_t id;
    run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
    float diff = max_abs_diff(got, want, (size_t)g_vocab);
    ck_assert_msg(diff <= 1e-4f, "prompt %d: max |logit - golden| = %g", _i, (double)diff);
    free(got);
    free(want);
}
END_TEST

START_TEST(test_forward_all_positions_match_golden) {
    const struct golden_prompt *g = &g_prompts[0];
    float *want = read_f32("golden/p0_all_logits.f32", (size_t)g->n_ids * g_vocab);
    float *got = malloc((size_t)g->n_ids * g_vocab * sizeof(float));
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 64, 64);
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, g->n_ids), KV_OK);
    struct model_batch_seq b = {
        .kv = &seq, .tokens = g->ids, .n_tokens = g->n_ids, .n_logits = g->n_ids};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, got), 0);
    ck_assert_int_eq(seq.n_pos, g->n_ids);
    for (int32_t p = 0; p < g->n_ids; p++) {
        float diff =
            max_abs_diff(got + (size_t)p * g_vocab, want + (size_t)p * g_vocab, (size_t)g_vocab);
        ck_assert_msg(diff <= 1e-4f, "position %d: max diff %g", p, (double)diff);
    }
    kv_seq_finish(kv, &seq);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    free(got);
    free(want);
}
END_TEST

START_TEST(test_greedy_tokens_match_golden) {
    const struct golden_prompt *g = &g_prompts[_i];
    float *logits = malloc((size_t)g_n_greedy * g_vocab * sizeof(float));
    int32_t ids[N_GREEDY];
    run_alone(g_model, g->ids, g->n_ids, g_n_greedy, logits, ids);
    for (int s = 0; s < g_n_greedy; s++) {
        ck_assert_msg(ids[s] == g->greedy[s], "prompt %d step %d: got %d, golden %d", _i, s, ids[s],
                      g->greedy[s]);
    }
    free(logits);
}
END_TEST

/*
 * The 7 prompts together: staggered starts, prefill in chunks of 1, 3 or 64 tokens mixed with
 * the others' decode steps in the same forward calls. Every logit row must be bit-identical
 * to the same sequence run alone.
 */
/* Loop index 0: float32 KV cache; 1: the f16 one (rounded K/V, same invariance); 2: q8 weights
 * (every row dequantizes the same weights the same way, so the same invariance). */
START_TEST(test_ragged_batch_is_bit_identical_to_alone) {
    static const int32_t chunk_of[N_PROMPTS] = {1, 3, 64, 3, 1, 1, 64};
    g_kv_dtype = _i == 1 ? KV_DTYPE_F16 : KV_DTYPE_F32;
    struct model *f32_model = g_model;
    if (_i == 2) {
        char load_err[512];
        g_model = model_load_with(g_model_dir, MODEL_WEIGHTS_Q8, load_err, sizeof(load_err));
        ck_assert_msg(g_model != NULL, "%s", load_err);
        ck_assert_int_eq(model_get_weights(g_model), MODEL_WEIGHTS_Q8);
    }
    size_t row_floats = (size_t)g_vocab;
    int32_t n_steps = g_n_greedy;
    float *alone[N_PROMPTS];
    int32_t alone_ids[N_PROMPTS][N_GREEDY];
    for (int i = 0; i < N_PROMPTS; i++) {
        alone[i] = malloc((size_t)n_steps * row_floats * sizeof(float));
        run_alone(g_model, g_prompts[i].ids, g_prompts[i].n_ids, n_steps, alone[i], alone_ids[i]);
    }
    char err[256];
    struct kv_cache *kv = kv_cache_create_with(g_model, 16u << 20, g_kv_dtype, err, sizeof(err));
    ck_assert_int_eq(kv_cache_dtype(kv), g_kv_dtype);
    struct model_scratch *scratch = model_scratch_create(g_model, 512, N_PROMPTS);
    float *logits = malloc(N_PROMPTS * row_floats * sizeof(float));
    struct kv_seq seqs[N_PROMPTS];
    int32_t n_prefilled[N_PROMPTS] = {0};
    int32_t n_done[N_PROMPTS] = {0}; /* logit rows produced */
    int32_t last_id[N_PROMPTS] = {0};
    for (int i = 0; i < N_PROMPTS; i++) {
        ck_assert_int_eq(kv_seq_init(&seqs[i], kv), 0);
    }
    int n_bit_identical = 0;
    int n_rows_total = 0;
    for (int step = 0;; step++) {
        struct model_batch_seq batch[N_PROMPTS];
        int which[N_PROMPTS];
        int n = 0;
        /* Decode tokens first (as the scheduler will), then prompt chunks. */
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < N_PROMPTS; i++) {
                const struct golden_prompt *g = &g_prompts[i];
                int is_prefill = n_prefilled[i] < g->n_ids;
                if (step < 2 * i || n_done[i] >= n_steps || is_prefill != (pass == 1)) {
                    continue;
                }
                struct model_batch_seq *b = &batch[n];
                b->kv = &seqs[i];
                if (is_prefill) {
                    int32_t len = g->n_ids - n_prefilled[i];
                    b->n_tokens = len < chunk_of[i] ? len : chunk_of[i];
                    b->tokens = g->ids + n_prefilled[i];
                    b->n_logits = n_prefilled[i] + b->n_tokens == g->n_ids ? 1 : 0;
                    n_prefilled[i] += b->n_tokens;
                } else {
                    b->n_tokens = 1;
                    b->tokens = &last_id[i];
                    b->n_logits = 1;
                }
                ck_assert_int_eq(kv_seq_reserve(kv, &seqs[i], b->n_tokens), KV_OK);
                which[n++] = i;
            }
        }
        if (n == 0) {
            int all_done = 1;
            for (int i = 0; i < N_PROMPTS; i++) {
                all_done = all_done && n_done[i] >= n_steps;
            }
            if (all_done) {
                break;
            }
            continue;
        }
        ck_assert_int_eq(model_forward(g_model, kv, scratch, batch, n, logits), 0);
        int r = 0;
        for (int j = 0; j < n; j++) {
            int i = which[j];
            if (batch[j].n_logits == 0) {
                continue;
            }
            const float *got = logits + (size_t)r++ * row_floats;
            const float *want = alone[i] + (size_t)n_done[i] * row_floats;
            float diff = max_abs_diff(got, want, row_floats);
            ck_assert_msg(diff <= 1e-5f, "prompt %d row %d differs by %g", i, n_done[i],
                          (double)diff);
            n_bit_identical += memcmp(got, want, row_floats * sizeof(float)) == 0;
            n_rows_total++;
            last_id[i] = argmax(got, g_vocab);
            ck_assert_int_eq(last_id[i], alone_ids[i][n_done[i]]);
            n_done[i]++;
        }
    }
    /* The kernels promise more than the 1e-5 the issue asks: the same bytes. */
    ck_assert_int_eq(n_bit_identical, n_rows_total);
    ck_assert_int_eq(n_rows_total, N_PROMPTS * n_steps);
    for (int i = 0; i < N_PROMPTS; i++) {
        kv_seq_finish(kv, &seqs[i]);
        free(alone[i]);
    }
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    free(logits);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    g_kv_dtype = KV_DTYPE_F32;
    if (g_model != f32_model) {
        model_destroy(g_model);
        g_model = f32_model;
    }
}
END_TEST

/* An f16 KV cache holds twice the blocks of a float32 one in the same budget, and its logits
 * stay close to transformers' (the stored K/V are rounded, so not within 1e-4). */
START_TEST(test_f16_kv_cache_close_to_golden) {
    char err[256];
    struct kv_cache *k32 = kv_cache_create_with(g_model, 8u << 20, KV_DTYPE_F32, err, sizeof(err));
    struct kv_cache *k16 = kv_cache_create_with(g_model, 8u << 20, KV_DTYPE_F16, err, sizeof(err));
    ck_assert_ptr_nonnull(k32);
    ck_assert_ptr_nonnull(k16);
    ck_assert_uint_eq(kv_cache_bytes_per_block(k16) * 2, kv_cache_bytes_per_block(k32));
    ck_assert_int_ge(kv_cache_n_blocks_total(k16), 2 * kv_cache_n_blocks_total(k32) - 1);
    kv_cache_destroy(k32);
    kv_cache_destroy(k16);
    g_kv_dtype = KV_DTYPE_F16;
    float worst = 0.0f;
    for (int i = 0; i < N_PROMPTS; i++) {
        const struct golden_prompt *g = &g_prompts[i];
        float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
        float *got = malloc((size_t)g_vocab * sizeof(float));
        int32_t id;
        run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
        float diff = max_abs_diff(got, want, (size_t)g_vocab);
        worst = diff > worst ? diff : worst;
        free(got);
        free(want);
    }
    g_kv_dtype = KV_DTYPE_F32;
    ck_assert_msg(worst > 0.0f && worst < 1e-2f, "f16 KV: max |logit - golden| = %g",
                  (double)worst);
    enum kv_dtype d;
    ck_assert_int_eq(kv_dtype_parse("f16", &d), 0);
    ck_assert_int_eq(d, KV_DTYPE_F16);
    ck_assert_int_eq(kv_dtype_parse("fp8", &d), -1);
}
END_TEST

/* A forked sequence continues from the shared prompt exactly like a fresh run of the same
 * tokens, and writing into the shared last block does not disturb the original. */
START_TEST(test_forked_sequence_matches_fresh_run) {
    const struct golden_prompt *g = &g_prompts[1]; /* 13 tokens: the last block is partial */
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 64, 2);
    float *a = malloc(2 * (size_t)g_vocab * sizeof(float));
    float *b = malloc(2 * (size_t)g_vocab * sizeof(float));
    struct kv_seq src, dst;
    ck_assert_int_eq(kv_seq_init(&src, kv), 0);
    ck_assert_int_eq(kv_seq_init(&dst, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &src, g->n_ids), KV_OK);
    struct model_batch_seq p = {.kv = &src, .tokens = g->ids, .n_tokens = g->n_ids, .n_logits = 1};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &p, 1, a), 0);
    kv_seq_fork(kv, &dst, &src);
    int32_t t_src = 100;
    int32_t t_dst = 200;
    ck_assert_int_eq(kv_seq_reserve(kv, &src, 1), KV_OK);
    ck_assert_int_eq(kv_seq_reserve(kv, &dst, 1), KV_OK);
    struct model_batch_seq both[2] = {
        {.kv = &src, .tokens = &t_src, .n_tokens = 1, .n_logits = 1},
        {.kv = &dst, .tokens = &t_dst, .n_tokens = 1, .n_logits = 1},
    };
    ck_assert_int_eq(model_forward(g_model, kv, scratch, both, 2, a), 0);
    /* Fresh runs of prompt + 100 and prompt + 200. */
    int32_t ids[MAX_PROMPT];
    memcpy(ids, g->ids, (size_t)g->n_ids * sizeof(int32_t));
    for (int k = 0; k < 2; k++) {
        ids[g->n_ids] = k == 0 ? t_src : t_dst;
        struct kv_seq fresh;
        ck_assert_int_eq(kv_seq_init(&fresh, kv), 0);
        ck_assert_int_eq(kv_seq_reserve(kv, &fresh, g->n_ids + 1), KV_OK);
        struct model_batch_seq f = {
            .kv = &fresh, .tokens = ids, .n_tokens = g->n_ids + 1, .n_logits = 1};
        ck_assert_int_eq(model_forward(g_model, kv, scratch, &f, 1, b + (size_t)k * g_vocab), 0);
        kv_seq_finish(kv, &fresh);
    }
    ck_assert_float_le(max_abs_diff(a, b, 2 * (size_t)g_vocab), 1e-5f);
    ck_assert_int_eq(memcmp(a, b, 2 * (size_t)g_vocab * sizeof(float)), 0);
    kv_seq_finish(kv, &src);
    kv_seq_finish(kv, &dst);
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), kv_cache_n_blocks_total(kv));
    free(a);
    free(b);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}
END_TEST

START_TEST(test_forward_refuses_bad_batches) {
    char err[256];
    struct kv_cache *kv = kv_cache_create(g_model, 8u << 20, err, sizeof(err));
    struct model_scratch *scratch = model_scratch_create(g_model, 8, 1);
    float *logits = malloc((size_t)g_vocab * sizeof(float));
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, kv), 0);
    int32_t toks[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    /* Not reserved. */
    struct model_batch_seq b = {.kv = &seq, .tokens = toks, .n_tokens = 2, .n_logits = 1};
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, 16), KV_OK);
    /* More rows than the scratch holds. */
    b.n_tokens = 9;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    /* Token out of the vocabulary. */
    toks[0] = g_vocab;
    b.n_tokens = 2;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    toks[0] = 1;
    /* The same sequence twice in one batch. */
    struct model_batch_seq twice[2] = {b, b};
    twice[0].n_tokens = twice[1].n_tokens = 1;
    twice[0].n_logits = twice[1].n_logits = 0; /* within the scratch: only the duplicate is wrong */
    ck_assert_int_eq(model_forward(g_model, kv, scratch, twice, 2, logits), -1);
    twice[1].n_tokens = 0; /* the same batch without the duplicate row is fine... */
    twice[1].kv = NULL;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, twice, 1, logits), 0);
    kv_seq_truncate(kv, &seq, 0); /* ...and is undone for the checks below */
    ck_assert_int_eq(seq.n_pos, 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &seq, 16), KV_OK);
    /* n_logits > n_tokens. */
    b.n_logits = 3;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), -1);
    ck_assert_int_eq(seq.n_pos, 0);
    b.n_logits = 1;
    ck_assert_int_eq(model_forward(g_model, kv, scratch, &b, 1, logits), 0);
    ck_assert_int_eq(seq.n_pos, 2);
    kv_seq_finish(kv, &seq);
    free(logits);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
}
END_TEST

/* model_set_threads after a model is loaded (what `gptd serve --threads N` does) replaces the
 * process-wide pool: the loaded model must run on the new pool and still match golden. A model
 * that kept a pointer to the old pool ran on freed memory and produced constant logits. */
START_TEST(test_set_threads_after_load_keeps_logits) {
    const struct golden_prompt *g = &g_prompts[0];
    float *want = read_f32(g->last_logits_file, (size_t)g_vocab);
    float *got = malloc((size_t)g_vocab * sizeof(float));
    int32_t id;
    for (int n = 1; n <= 3; n++) {
        model_set_threads(n);
        run_alone(g_model, g->ids, g->n_ids, 1, got, &id);
        float diff = max_abs_diff(got, want, (size_t)g_vocab);
        ck_assert_msg(diff <= 1e-4f, "%d threads set after load: max |logit - golden| = %g", n,
                      (double)diff);
        ck_assert_int_eq(id, g->greedy[0]);
    }
    model_set_threads(0);
    free(got);
    free(want);
}
END_TEST

static Suite *model_forward_suite(void) {
    Suite *s = suite_create("model_forward");
    TCase *golden = tcase_create("golden");
    /* Checked: each test loads the model in its own (forked) process, so the compute threads
     * are that process's own. */
    tcase_add_checked_fixture(golden, fixture_setup, fixture_teardown);
    tcase_set_timeout(golden, 600);
    tcase_add_loop_test(golden, test_forward_last_logits_match_golden, 0, N_PROMPTS);
    tcase_add_test(golden, test_forward_all_positions_match_golden);
    tcase_add_loop_test(golden, test_greedy_tokens_match_golden, 0, N_PROMPTS);
    tcase_add_loop_test(golden, test_ragged_batch_is_bit_identical_to_alone, 0, 3);
    tcase_add_test(golden, test_f16_kv_cache_close_to_golden);
    tcase_add_test(golden, test_forked_sequence_matches_fresh_run);
    tcase_add_test(golden, test_forward_refuses_bad_batches);
    tcase_add_test(golden, test_set_threads_after_load_keeps_logits);
    suite_add_tcase(s, golden);
    return s;
}

int main(void) {
    log_set_level(LOG_LEVEL_WARN);
    SRunner *sr = srunner_create(model_forward_suite());
    srunner_run_all(sr, CK_NORMAL);
    int n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
