/*
 * test_sampling.c: Check suite for src/sampling's sampler, RNG and parameter validation.
 *
 * Distribution claims are checked with a chi-square goodness-of-fit test at p = 0.001 on small
 * synthetic logit vectors with fixed seeds (so a run is deterministic: a pass stays a pass);
 * filters against a reference computed by sorting; processors through
 * sampler_processed_logits(), exactly. Stop strings are in test_stop.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include <gptd/sampling.h>

/* Chi-square critical values at p = 0.001 for 1..10 degrees of freedom. */
static const double chi2_crit_001[11] = {0,      10.828, 13.816, 16.266, 18.467, 20.515,
                                         22.458, 24.322, 26.124, 27.877, 29.588};

static const float small_logits[8] = {0.0f, 0.3f, -0.2f, 0.8f, -0.5f, 0.1f, 0.6f, -0.9f};

static int n_draws(void) {
    /* Kept at the 100,000 even under valgrind: 8-token draws are cheap. */
    return 100000;
}

static struct sampler *make_sampler(const struct sampling_params *p, int32_t v,
                                    const int32_t *prompt, int32_t n_prompt) {
    char err[200];
    struct sampler *s = sampler_create(p, 0, v, NULL, 0, prompt, n_prompt, err, sizeof(err));
    ck_assert_msg(s != NULL, "sampler_create: %s", err);
    return s;
}

static struct sampling_params seeded(uint64_t seed) {
    struct sampling_params p;
    sampling_params_init_default(&p);
    p.has_seed = true;
    p.seed = seed;
    p.max_tokens = 1000000;
    return p;
}

/* softmax(logits / t) over the ids where keep[i] (or all when keep is NULL), in double. */
static void ref_softmax(const float *logits, int32_t v, double t, const bool *keep, double *out) {
    double max = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        if ((keep == NULL || keep[i]) && logits[i] > max) {
            max = logits[i];
        }
    }
    double sum = 0.0;
    for (int32_t i = 0; i < v; i++) {
        out[i] = (keep == NULL || keep[i]) ? exp((logits[i] - max) / t) : 0.0;
        sum += out[i];
    }
    for (int32_t i = 0; i < v; i++) {
        out[i] /= sum;
    }
}

/* Draws n tokens and checks them against want (v,) by chi-square; tokens with want 0 must
 * never appear. */
static void check_distribution(struct sampler *s, const float *logits, int32_t v,
                               const double *want) {
    int counts[64] = {0};
    int n = n_draws();
    struct sample_result out;
    int n_bad = 0;
    for (int i = 0; i < n; i++) {
        /* No ck_assert in the loop: each one is a syscall in Check's fork mode. */
        int32_t t = sampler_sample(s, logits, &out);
        if (t < 0 || t >= v) {
            n_bad++;
            continue;
        }
        counts[t]++;
    }
    ck_assert_int_eq(n_bad, 0);
    double chi2 = 0.0;
    int df = -1;
    for (int32_t i = 0; i < v; i++) {
        if (want[i] == 0.0) {
            ck_assert_msg(counts[i] == 0, "token %d has probability 0 but was drawn %d times",
                          (int)i, counts[i]);
            continue;
        }
        double e = want[i] * n;
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
        df++;
    }
    ck_assert_int_ge(df, 1);
    ck_assert_int_le(df, 10);
    ck_assert_msg(chi2 < chi2_crit_001[df], "chi-square %.2f >= %.2f (df %d): p < 0.001", chi2,
                  chi2_crit_001[df], df);
}

static const float temperatures[] = {0.5f, 1.0f, 1.5f, 2.0f};

START_TEST(test_sample_matches_softmax_at_temperature) {
    struct sampling_params p = seeded(1234 + (uint64_t)_i);
    p.temperature = temperatures[_i];
    struct sampler *s = make_sampler(&p, 8, NULL, 0);
    double want[8];
    ref_softmax(small_logits, 8, p.temperature, NULL, want);
    check_distribution(s, small_logits, 8, want);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_top_k_matches_renormalised_top_k) {
    struct sampling_params p = seeded(77);
    p.temperature = 0.8f;
    p.top_k = 4;
    struct sampler *s = make_sampler(&p, 8, NULL, 0);
    /* Top 4 of small_logits: ids 3 (0.8), 6 (0.6), 1 (0.3), 5 (0.1). */
    bool keep[8] = {false, true, false, true, false, true, true, false};
    double want[8];
    ref_softmax(small_logits, 8, p.temperature, keep, want);
    check_distribution(s, small_logits, 8, want);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_top_p_matches_renormalised_nucleus) {
    struct sampling_params p = seeded(78);
    p.top_p = 0.6f;
    struct sampler *s = make_sampler(&p, 8, NULL, 0);
    /* At T = 1 the sorted probabilities are .238 .195 .145 .118 .107 .088 .065 .044 (ids 3 6 1
     * 5 0 2 4 7): the first four reach .697 >= .6, the first three only .578. */
    bool keep[8] = {false, true, false, true, false, true, true, false};
    double want[8];
    ref_softmax(small_logits, 8, 1.0, keep, want);
    check_distribution(s, small_logits, 8, want);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_min_p_matches_renormalised_survivors) {
    struct sampling_params p = seeded(79);
    p.min_p = 0.5f;
    struct sampler *s = make_sampler(&p, 8, NULL, 0);
    /* p / p_max = exp(l - 0.8) >= 0.5  <=>  l >= 0.8 - ln 2 = 0.107: ids 1, 3, 6 (0.1 is out). */
    bool keep[8] = {false, true, false, true, false, false, true, false};
    double want[8];
    ref_softmax(small_logits, 8, 1.0, keep, want);
    check_distribution(s, small_logits, 8, want);
    sampler_destroy(s);
}
END_TEST

/* A deterministic pseudo-random logit vector, roughly normal, with a few peaks. */
static void random_logits(float *l, int32_t v, uint64_t seed, float scale) {
    struct rng r;
    rng_seed(&r, seed);
    for (int32_t i = 0; i < v; i++) {
        double a = rng_next_double(&r) + rng_next_double(&r) + rng_next_double(&r) - 1.5;
        l[i] = (float)(a * 2.0 * scale);
    }
    for (int k = 0; k < 3; k++) {
        l[rng_next_u64(&r) % (uint64_t)v] += 6.0f * scale;
    }
}

static int cmp_desc_by_value(const void *a, const void *b, const float *l) {
    int32_t x = *(const int32_t *)a;
    int32_t y = *(const int32_t *)b;
    if (l[x] != l[y]) {
        return l[x] > l[y] ? -1 : 1;
    }
    return x < y ? -1 : 1;
}

static const float *sort_key;
static int cmp_ids(const void *a, const void *b) {
    return cmp_desc_by_value(a, b, sort_key);
}

/* ids (v,) sorted by l, largest first. */
static void sort_ids(const float *l, int32_t v, int32_t *ids) {
    for (int32_t i = 0; i < v; i++) {
        ids[i] = i;
    }
    sort_key = l;
    qsort(ids, (size_t)v, sizeof(*ids), cmp_ids);
}

START_TEST(test_sample_top_k_never_leaves_top_k) {
    enum { V = 1000, K = 10 };
    static float l[V];
    static int32_t ids[V];
    random_logits(l, V, 5, 1.0f);
    sort_ids(l, V, ids);
    bool in_top[V] = {false};
    for (int i = 0; i < K; i++) {
        in_top[ids[i]] = true;
    }
    struct sampling_params p = seeded(6);
    p.top_k = K;
    p.temperature = 2.0f; /* flatten, so that the tail would be drawn if it leaked */
    p.candidates = 64;
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    int seen_n = 0;
    bool seen[V] = {false};
    for (int i = 0; i < 5000; i++) {
        int32_t t = sampler_sample(s, l, &out);
        ck_assert_msg(in_top[t], "token %d is not in the top %d", (int)t, K);
        ck_assert_int_eq(out.n_survivors, K);
        ck_assert_int_eq(out.n_candidates, K);
        if (!seen[t]) {
            seen[t] = true;
            seen_n++;
        }
    }
    ck_assert_int_eq(seen_n, K);
    /* The reported candidates are the top K, most likely first, summing to 1. */
    double sum = 0.0;
    for (int i = 0; i < K; i++) {
        ck_assert_int_eq(out.candidates[i].token_id, ids[i]);
        sum += out.candidates[i].prob;
    }
    ck_assert_double_eq_tol(sum, 1.0, 1e-5);
    sampler_destroy(s);
}
END_TEST

/* The reference nucleus size: sort, accumulate, first prefix reaching top_p of the mass.
 * Returns -1 when the boundary is within rounding of the target (the vector is skipped). */
/* The same over the first v of ids (already sorted): top-k then top-p. */
static int32_t ref_nucleus_sorted(const float *l, int32_t v, float t, float top_p,
                                  const int32_t *ids) {
    float inv_t = 1.0f / t;
    double total = 0.0;
    for (int32_t i = 0; i < v; i++) {
        total += expf((l[ids[i]] - l[ids[0]]) * inv_t);
    }
    double target = (double)top_p * total;
    double acc = 0.0;
    for (int32_t i = 0; i < v; i++) {
        double prev = acc;
        acc += expf((l[ids[i]] - l[ids[0]]) * inv_t);
        if (acc >= target) {
            if (fabs(acc - target) < 1e-6 * total || fabs(prev - target) < 1e-6 * total) {
                return -1;
            }
            return i + 1;
        }
    }
    return -1;
}

static int32_t ref_nucleus(const float *l, int32_t v, float t, float top_p, int32_t *ids) {
    sort_ids(l, v, ids);
    return ref_nucleus_sorted(l, v, t, top_p, ids);
}

START_TEST(test_sample_top_p_keeps_exactly_the_nucleus) {
    enum { V = 3000 };
    static float l[V];
    static int32_t ids[V];
    static const float top_ps[] = {0.05f, 0.3f, 0.5f, 0.9f, 0.95f, 0.999f};
    int checked = 0;
    for (int round = 0; round < 12; round++) {
        random_logits(l, V, 100 + (uint64_t)round, round % 2 ? 1.0f : 3.0f);
        if (round % 3 == 0) {
            for (int32_t i = 0; i < V; i += 7) { /* ties */
                l[i] = l[(i + 14) % V];
            }
        }
        for (size_t k = 0; k < sizeof(top_ps) / sizeof(top_ps[0]); k++) {
            int32_t m = ref_nucleus(l, V, 1.0f, top_ps[k], ids);
            if (m < 0) {
                continue;
            }
            struct sampling_params p = seeded(round * 10 + k);
            p.top_p = top_ps[k];
            p.candidates = 64;
            struct sampler *s = make_sampler(&p, V, NULL, 0);
            struct sample_result out;
            int32_t tok = sampler_sample(s, l, &out);
            ck_assert_int_eq(out.n_survivors, m);
            /* The drawn token belongs to the nucleus: its logit is at least the boundary's. */
            ck_assert(l[tok] >= l[ids[m - 1]]);
            int32_t c = m < 64 ? m : 64;
            ck_assert_int_eq(out.n_candidates, c);
            for (int32_t i = 0; i < c; i++) {
                ck_assert(l[out.candidates[i].token_id] == l[ids[i]]);
            }
            sampler_destroy(s);
            checked++;
        }
    }
    ck_assert_int_ge(checked, 50);
    /* top_k = 2000 then top_p: the histogram path over a candidate list. */
    checked = 0;
    for (int round = 0; round < 6; round++) {
        random_logits(l, V, 200 + (uint64_t)round, 0.7f);
        sort_ids(l, V, ids);
        int32_t m = ref_nucleus_sorted(l, 2000, 1.0f, 0.97f, ids);
        if (m < 0) {
            continue;
        }
        ck_assert_int_gt(m, 512);
        struct sampling_params p = seeded(300 + (uint64_t)round);
        p.top_k = 2000;
        p.top_p = 0.97f;
        struct sampler *s = make_sampler(&p, V, NULL, 0);
        struct sample_result out;
        int32_t tok = sampler_sample(s, l, &out);
        ck_assert_int_eq(out.n_survivors, m);
        ck_assert(l[tok] >= l[ids[m - 1]]);
        sampler_destroy(s);
        checked++;
    }
    ck_assert_int_ge(checked, 4);
}
END_TEST

START_TEST(test_sample_top_p_takes_just_enough_tied_tokens) {
    /* Ten equal logits: 0.35 of the mass needs 4 of them (0.3 < 0.35 <= 0.4), not all ten. */
    float l[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -INFINITY, -INFINITY};
    struct sampling_params p = seeded(8);
    p.top_p = 0.35f;
    struct sampler *s = make_sampler(&p, 12, NULL, 0);
    struct sample_result out;
    sampler_sample(s, l, &out);
    ck_assert_int_eq(out.n_survivors, 4);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_top_p_reaches_every_nucleus_member_only) {
    enum { V = 200 };
    static float l[V];
    static int32_t ids[V];
    random_logits(l, V, 9, 0.5f);
    int32_t m = ref_nucleus(l, V, 1.0f, 0.5f, ids);
    ck_assert_int_gt(m, 5);
    bool in_nucleus[V] = {false};
    for (int32_t i = 0; i < m; i++) {
        in_nucleus[ids[i]] = true;
    }
    struct sampling_params p = seeded(10);
    p.top_p = 0.5f;
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    bool seen[V] = {false};
    for (int i = 0; i < 20000; i++) {
        int32_t t = sampler_sample(s, l, &out);
        ck_assert_msg(in_nucleus[t], "token %d is outside the nucleus", (int)t);
        seen[t] = true;
    }
    for (int32_t i = 0; i < m; i++) {
        ck_assert_msg(seen[ids[i]], "nucleus member %d never drawn", (int)ids[i]);
    }
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_min_p_reaches_every_survivor_only) {
    enum { V = 500 };
    static float l[V];
    for (int32_t i = 0; i < V; i++) { /* a ramp, scattered over the ids */
        l[(i * 37) % V] = -0.01f * (float)i;
    }
    float max = -INFINITY;
    for (int32_t i = 0; i < V; i++) {
        max = fmaxf(max, l[i]);
    }
    struct sampling_params p = seeded(12);
    p.min_p = 0.8f; /* exp(-0.01 i) >= 0.8 for i <= 22: 23 survivors */
    p.temperature = 1.0f;
    bool survives[V];
    int32_t n_survive = 0;
    for (int32_t i = 0; i < V; i++) {
        survives[i] = expf(l[i] - max) >= p.min_p;
        n_survive += survives[i];
    }
    ck_assert_int_eq(n_survive, 23);
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    bool seen[V] = {false};
    for (int i = 0; i < 20000; i++) {
        int32_t t = sampler_sample(s, l, &out);
        ck_assert_msg(survives[t], "token %d is below min_p", (int)t);
        ck_assert_int_eq(out.n_survivors, n_survive);
        seen[t] = true;
    }
    for (int32_t i = 0; i < V; i++) {
        ck_assert(!survives[i] || seen[i]);
    }
    sampler_destroy(s);
}
END_TEST

START_TEST(test_nucleus_is_small_when_sure_and_large_when_unsure) {
    enum { V = 1000 };
    static float sure[V];
    static float unsure[V];
    random_logits(sure, V, 13, 0.3f);
    sure[42] = 20.0f;
    sure[43] = 19.5f;
    random_logits(unsure, V, 14, 0.3f);
    struct sampling_params p = seeded(15);
    p.top_p = 0.9f;
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    sampler_sample(s, sure, &out);
    ck_assert_int_eq(out.n_survivors, 2);
    sampler_sample(s, unsure, &out);
    ck_assert_int_gt(out.n_survivors, 100);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_temperature_zero_is_argmax_after_bias) {
    enum { V = 300 };
    static float l[V];
    random_logits(l, V, 16, 1.0f);
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++) {
        if (l[i] > l[best]) {
            best = i;
        }
    }
    struct sampling_params p = seeded(17);
    p.temperature = 0.0f;
    p.logprobs = 0;
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(sampler_sample(s, l, &out), best);
        ck_assert_int_eq(out.n_survivors, 1);
    }
    sampler_destroy(s);
    /* A bias that lifts another token above the maximum moves the argmax to it. */
    int32_t other = (best + 1) % V;
    sampling_params_add_logit_bias(&p, other, l[best] - l[other] + 0.5f);
    s = make_sampler(&p, V, NULL, 0);
    ck_assert_int_eq(sampler_sample(s, l, &out), other);
    sampler_destroy(s);
    /* Ties go to the lower id. */
    float tie[4] = {1.0f, 3.0f, 3.0f, 2.0f};
    sampling_params_init_default(&p);
    p.temperature = 0.0f;
    s = make_sampler(&p, 4, NULL, 0);
    ck_assert_int_eq(sampler_sample(s, tie, &out), 1);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_logit_bias_adds_exactly_and_minus_100_bans) {
    float l[6] = {1.0f, 2.0f, -3.0f, 0.5f, 10.0f, 0.0f};
    struct sampling_params p = seeded(18);
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 0, 3.5f), 0);
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 2, -1.25f), 0);
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 4, -100.0f), 0);
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 5, 100.0f), 0);
    struct sampler *s = make_sampler(&p, 6, NULL, 0);
    float got[6];
    sampler_processed_logits(s, l, got);
    ck_assert(got[0] == 1.0f + 3.5f);
    ck_assert(got[1] == 2.0f);
    ck_assert(got[2] == -3.0f - 1.25f);
    ck_assert(got[3] == 0.5f);
    ck_assert(isinf(got[4]) && got[4] < 0);
    ck_assert(got[5] == 100.0f);
    sampler_destroy(s);
    /* Banned: never drawn, even when it is by far the most likely and the temperature is 2. */
    sampling_params_init_default(&p);
    p.has_seed = true;
    p.seed = 19;
    p.temperature = 2.0f;
    sampling_params_add_logit_bias(&p, 4, -100.0f);
    s = make_sampler(&p, 6, NULL, 0);
    struct sample_result out;
    for (int i = 0; i < 20000; i++) {
        ck_assert_int_ne(sampler_sample(s, l, &out), 4);
    }
    sampler_destroy(s);
}
END_TEST

START_TEST(test_repetition_penalty_divides_positive_multiplies_negative_over_prompt) {
    float l[6] = {2.0f, -1.0f, 3.0f, -2.0f, 4.0f, 0.0f};
    int32_t prompt[3] = {0, 1, 0};
    struct sampling_params p = seeded(20);
    p.repetition_penalty = 1.6f;
    struct sampler *s = make_sampler(&p, 6, prompt, 3);
    float got[6];
    sampler_processed_logits(s, l, got);
    ck_assert(got[0] == 2.0f / 1.6f);
    ck_assert(got[1] == -1.0f * 1.6f);
    ck_assert(got[2] == 3.0f);
    ck_assert(got[3] == -2.0f);
    /* Generated tokens join the prompt's, once each however often they occur. */
    sampler_accept(s, 3);
    sampler_accept(s, 3);
    sampler_accept(s, 0);
    sampler_processed_logits(s, l, got);
    ck_assert(got[0] == 2.0f / 1.6f);
    ck_assert(got[3] == -2.0f * 1.6f);
    ck_assert(got[4] == 4.0f);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_presence_and_frequency_penalties_count_generated_tokens_only) {
    float l[6] = {2.0f, -1.0f, 3.0f, -2.0f, 4.0f, 0.0f};
    int32_t prompt[2] = {4, 4};
    struct sampling_params p = seeded(21);
    p.presence_penalty = 0.75f;
    p.frequency_penalty = 0.5f;
    struct sampler *s = make_sampler(&p, 6, prompt, 2);
    float got[6];
    sampler_processed_logits(s, l, got);
    for (int i = 0; i < 6; i++) {
        ck_assert(got[i] == l[i]); /* the prompt does not count */
    }
    sampler_accept(s, 2);
    sampler_accept(s, 2);
    sampler_accept(s, 2);
    sampler_accept(s, 1);
    sampler_processed_logits(s, l, got);
    ck_assert(got[2] == 3.0f - (0.5f * 3.0f + 0.75f));
    ck_assert(got[1] == -1.0f - (0.5f * 1.0f + 0.75f));
    ck_assert(got[4] == 4.0f);
    ck_assert(got[0] == 2.0f);
    sampler_destroy(s);
    /* Negative values reward repetition by the same amounts. */
    p.presence_penalty = -2.0f;
    p.frequency_penalty = -1.0f;
    s = make_sampler(&p, 6, prompt, 2);
    sampler_accept(s, 5);
    sampler_accept(s, 5);
    sampler_processed_logits(s, l, got);
    ck_assert(got[5] == 0.0f + 2.0f + 2.0f);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_penalties_apply_after_bias_in_documented_order) {
    float l[3] = {2.0f, 1.0f, 0.0f};
    int32_t prompt[1] = {0};
    struct sampling_params p = seeded(22);
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 1.0f;
    sampling_params_add_logit_bias(&p, 0, 2.0f);
    struct sampler *s = make_sampler(&p, 3, prompt, 1);
    sampler_accept(s, 0);
    float got[3];
    sampler_processed_logits(s, l, got);
    /* bias: 2 + 2 = 4; repetition: 4 / 2 = 2; frequency + presence: 2 - 1 * 1 - 0 = 1. */
    ck_assert(got[0] == 1.0f);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_min_tokens_bans_eos_and_stop_ids_then_they_finish) {
    float l[5] = {0.0f, 0.0f, 9.0f, 9.0f, 0.0f}; /* EOS = 2, stop id = 3: both very likely */
    struct sampling_params p = seeded(23);
    p.min_tokens = 3;
    p.max_tokens = 10;
    sampling_params_add_stop_token_id(&p, 3);
    char err[100];
    struct sampler *s =
        sampler_create(&p, 0, 5, (const int32_t[]){2}, 1, NULL, 0, err, sizeof(err));
    ck_assert_ptr_nonnull(s);
    struct sample_result out;
    for (int i = 0; i < 3; i++) {
        int32_t t = sampler_sample(s, l, &out);
        ck_assert(t != 2 && t != 3);
        ck_assert_int_eq(sampler_accept(s, t), SAMPLER_CONTINUE);
    }
    ck_assert_int_eq(sampler_n_generated(s), 3);
    int32_t t = sampler_sample(s, l, &out);
    ck_assert(t == 2 || t == 3);
    ck_assert_int_eq(sampler_accept(s, 2), SAMPLER_FINISH_EOS);
    sampler_destroy(s);

    p.min_tokens = 0;
    s = sampler_create(&p, 0, 5, (const int32_t[]){2}, 1, NULL, 0, err, sizeof(err));
    ck_assert_int_eq(sampler_accept(s, 3), SAMPLER_FINISH_STOP_TOKEN);
    sampler_destroy(s);

    /* ignore_eos: EOS ends nothing; max_tokens ends it with "length". */
    p.ignore_eos = true;
    p.max_tokens = 2;
    s = sampler_create(&p, 0, 5, (const int32_t[]){2}, 1, NULL, 0, err, sizeof(err));
    ck_assert_int_eq(sampler_accept(s, 2), SAMPLER_CONTINUE);
    ck_assert_int_eq(sampler_accept(s, 2), SAMPLER_FINISH_LENGTH);
    sampler_destroy(s);
}
END_TEST

/* Several end tokens (Llama 3's <|eot_id|> and <|end_of_text|>): each ends the sequence, and
 * min_tokens bans all of them; an id outside the vocabulary is ignored. */
START_TEST(test_every_end_token_ends_and_is_banned_by_min_tokens) {
    float l[6] = {0.0f, 0.0f, 9.0f, 0.0f, 9.0f, 0.0f}; /* end tokens 2 and 4: very likely */
    struct sampling_params p = seeded(29);
    p.min_tokens = 4;
    p.max_tokens = 10;
    char err[100];
    const int32_t ends[] = {2, 4, 99};
    struct sampler *s = sampler_create(&p, 0, 6, ends, 3, NULL, 0, err, sizeof(err));
    ck_assert_ptr_nonnull(s);
    struct sample_result out;
    for (int i = 0; i < 4; i++) {
        int32_t t = sampler_sample(s, l, &out);
        ck_assert(t != 2 && t != 4);
        ck_assert_int_eq(sampler_accept(s, t), SAMPLER_CONTINUE);
    }
    ck_assert_int_eq(sampler_accept(s, 4), SAMPLER_FINISH_EOS);
    sampler_destroy(s);
    p.min_tokens = 0;
    s = sampler_create(&p, 0, 6, ends, 2, NULL, 0, err, sizeof(err));
    ck_assert_int_eq(sampler_accept(s, 2), SAMPLER_FINISH_EOS);
    sampler_destroy(s);
    s = sampler_create(&p, 0, 6, ends, 2, NULL, 0, err, sizeof(err));
    ck_assert_int_eq(sampler_accept(s, 5), SAMPLER_CONTINUE);
    ck_assert_int_eq(sampler_accept(s, 4), SAMPLER_FINISH_EOS);
    sampler_destroy(s);
}
END_TEST

static void sample_sequence(uint64_t seed, int32_t i_choice, int32_t *out_ids, int n) {
    enum { V = 500 };
    static float l[V];
    struct sampling_params p = seeded(seed);
    p.top_p = 0.95f;
    p.temperature = 1.2f;
    p.frequency_penalty = 0.3f;
    char err[100];
    struct sampler *s = sampler_create(&p, i_choice, V, NULL, 0, NULL, 0, err, sizeof(err));
    ck_assert_ptr_nonnull(s);
    struct sample_result out;
    for (int i = 0; i < n; i++) {
        random_logits(l, V, 1000 + (uint64_t)i, 0.5f); /* a different row each step */
        out_ids[i] = sampler_sample(s, l, &out);
        sampler_accept(s, out_ids[i]);
    }
    sampler_destroy(s);
}

START_TEST(test_same_seed_same_tokens_different_seed_different_tokens) {
    int32_t a[100];
    int32_t b[100];
    int32_t c[100];
    int32_t d[100];
    sample_sequence(42, 0, a, 100);
    sample_sequence(42, 0, b, 100);
    sample_sequence(43, 0, c, 100);
    sample_sequence(42, 1, d, 100); /* choice 1 of seed 42 is seed 43's stream */
    ck_assert_mem_eq(a, b, sizeof(a));
    ck_assert(memcmp(a, c, sizeof(a)) != 0);
    ck_assert_mem_eq(c, d, sizeof(c));
}
END_TEST

START_TEST(test_one_draw_per_token_whatever_the_logits) {
    /* Two samplers with the same seed and params see different rows for 5 steps (one peaked,
     * one flat); their 6th draws on a flat row must coincide, which they can only if each step
     * consumed exactly one draw. Once through the full-vocabulary path, once through the
     * filtered one. */
    enum { V = 1000 };
    static float flat[V];
    static float peaked[V];
    for (int32_t i = 0; i < V; i++) {
        flat[i] = 0.0f;
        peaked[i] = i == 7 ? 50.0f : 0.0f;
    }
    for (int variant = 0; variant < 2; variant++) {
        struct sampling_params p = seeded(99);
        p.top_p = variant == 0 ? 1.0f : 0.999f;
        struct sampler *a = make_sampler(&p, V, NULL, 0);
        struct sampler *b = make_sampler(&p, V, NULL, 0);
        struct sample_result out;
        for (int i = 0; i < 5; i++) {
            ck_assert_int_eq(sampler_sample(a, peaked, &out), 7);
            sampler_sample(b, flat, &out);
        }
        int32_t ta = sampler_sample(a, flat, &out);
        int32_t tb = sampler_sample(b, flat, &out);
        ck_assert_int_eq(ta, tb);
        sampler_destroy(a);
        sampler_destroy(b);
    }
}
END_TEST

START_TEST(test_logprobs_are_raw_log_softmax_with_top_alternatives) {
    enum { V = 400 };
    static float l[V];
    static int32_t ids[V];
    random_logits(l, V, 24, 1.0f);
    sort_ids(l, V, ids);
    double max = l[ids[0]];
    double sum = 0.0;
    for (int32_t i = 0; i < V; i++) {
        sum += exp(l[i] - max);
    }
    double lse = max + log(sum);
    struct sampling_params p = seeded(25);
    p.logprobs = 5;
    p.temperature = 0.3f; /* none of these may change the reported numbers */
    p.top_k = 3;
    sampling_params_add_logit_bias(&p, ids[0], -100.0f);
    struct sampler *s = make_sampler(&p, V, NULL, 0);
    struct sample_result out;
    int32_t t = sampler_sample(s, l, &out);
    ck_assert(t != ids[0]);
    ck_assert(out.has_logprobs);
    ck_assert_double_eq_tol(out.logprob, l[t] - lse, 1e-4);
    ck_assert_int_eq(out.n_top_logprobs, 5);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(out.top_logprobs[i].token_id, ids[i]);
        ck_assert_double_eq_tol(out.top_logprobs[i].logprob, l[ids[i]] - lse, 1e-4);
    }
    sampler_destroy(s);
    /* Off: nothing reported. */
    p.logprobs = -1;
    s = make_sampler(&p, V, NULL, 0);
    sampler_sample(s, l, &out);
    ck_assert(!out.has_logprobs);
    ck_assert_int_eq(out.n_top_logprobs, 0);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_sample_returns_minus_one_when_every_token_is_banned) {
    float l[3] = {1.0f, 2.0f, 3.0f};
    struct sampling_params p = seeded(26);
    for (int32_t i = 0; i < 3; i++) {
        sampling_params_add_logit_bias(&p, i, -100.0f);
    }
    struct sampler *s = make_sampler(&p, 3, NULL, 0);
    struct sample_result out;
    ck_assert_int_eq(sampler_sample(s, l, &out), -1);
    sampler_destroy(s);
    p.temperature = 0.0f;
    p.top_k = 2;
    s = make_sampler(&p, 3, NULL, 0);
    ck_assert_int_eq(sampler_sample(s, l, &out), -1);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_rng_streams_are_reproducible_and_uniform) {
    struct rng a;
    struct rng b;
    rng_seed(&a, 7);
    rng_seed(&b, 7);
    for (int i = 0; i < 1000; i++) {
        ck_assert_uint_eq(rng_next_u64(&a), rng_next_u64(&b));
    }
    rng_seed(&b, 8);
    ck_assert_uint_ne(rng_next_u64(&a), rng_next_u64(&b));
    /* Ten equal bins of [0, 1). */
    int bins[10] = {0};
    int n = 100000;
    for (int i = 0; i < n; i++) {
        double u = rng_next_double(&a);
        ck_assert(u >= 0.0 && u < 1.0);
        bins[(int)(u * 10)]++;
    }
    double chi2 = 0.0;
    for (int i = 0; i < 10; i++) {
        chi2 += (bins[i] - n / 10.0) * (bins[i] - n / 10.0) / (n / 10.0);
    }
    ck_assert(chi2 < chi2_crit_001[9]);
    ck_assert_uint_ne(sampling_seed_random(), sampling_seed_random());
}
END_TEST

/* Validation: each row breaks one field; the named param must come back. */
struct bad_case {
    const char *param;
    void (*mutate)(struct sampling_params *p);
};

static void m_temp_high(struct sampling_params *p) {
    p->temperature = 2.01f;
}
static void m_temp_neg(struct sampling_params *p) {
    p->temperature = -0.1f;
}
static void m_temp_nan(struct sampling_params *p) {
    p->temperature = NAN;
}
static void m_top_k(struct sampling_params *p) {
    p->top_k = -2;
}
static void m_top_p_zero(struct sampling_params *p) {
    p->top_p = 0.0f;
}
static void m_top_p_high(struct sampling_params *p) {
    p->top_p = 1.01f;
}
static void m_min_p_one(struct sampling_params *p) {
    p->min_p = 1.0f;
}
static void m_min_p_neg(struct sampling_params *p) {
    p->min_p = -0.01f;
}
static void m_rep_zero(struct sampling_params *p) {
    p->repetition_penalty = 0.0f;
}
static void m_rep_inf(struct sampling_params *p) {
    p->repetition_penalty = INFINITY;
}
static void m_presence(struct sampling_params *p) {
    p->presence_penalty = 2.5f;
}
static void m_frequency(struct sampling_params *p) {
    p->frequency_penalty = -2.01f;
}
static void m_bias_value(struct sampling_params *p) {
    sampling_params_add_logit_bias(p, 3, 100.5f);
}
static void m_bias_id(struct sampling_params *p) {
    sampling_params_add_logit_bias(p, 1000, 1.0f);
}
static void m_bias_neg_id(struct sampling_params *p) {
    sampling_params_add_logit_bias(p, -1, 1.0f);
}
static void m_bias_dup(struct sampling_params *p) {
    sampling_params_add_logit_bias(p, 5, 1.0f);
    sampling_params_add_logit_bias(p, 5, 2.0f);
}
static void m_bias_count(struct sampling_params *p) {
    p->n_logit_bias = SAMPLING_MAX_LOGIT_BIAS + 1;
}
static void m_max_tokens(struct sampling_params *p) {
    p->max_tokens = 0;
}
static void m_min_tokens_neg(struct sampling_params *p) {
    p->min_tokens = -1;
}
static void m_min_tokens_gt_max(struct sampling_params *p) {
    p->max_tokens = 5;
    p->min_tokens = 6;
}
static void m_stop_empty(struct sampling_params *p) {
    p->n_stop = 1;
    p->stop[0][0] = '\0';
}
static void m_stop_utf8(struct sampling_params *p) {
    sampling_params_add_stop(p, "ab\xc3", 3);
}
static void m_stop_surrogate(struct sampling_params *p) {
    sampling_params_add_stop(p, "\xed\xa0\x80", 3);
}
static void m_stop_count(struct sampling_params *p) {
    p->n_stop = SAMPLING_MAX_STOP + 1;
}
static void m_stop_ids(struct sampling_params *p) {
    sampling_params_add_stop_token_id(p, 1000);
}
static void m_logprobs(struct sampling_params *p) {
    p->logprobs = 21;
}
static void m_logprobs_neg(struct sampling_params *p) {
    p->logprobs = -2;
}
static void m_candidates(struct sampling_params *p) {
    p->candidates = SAMPLING_MAX_CANDIDATES + 1;
}

static const struct bad_case bad_cases[] = {
    {"temperature", m_temp_high},
    {"temperature", m_temp_neg},
    {"temperature", m_temp_nan},
    {"top_k", m_top_k},
    {"top_p", m_top_p_zero},
    {"top_p", m_top_p_high},
    {"min_p", m_min_p_one},
    {"min_p", m_min_p_neg},
    {"repetition_penalty", m_rep_zero},
    {"repetition_penalty", m_rep_inf},
    {"presence_penalty", m_presence},
    {"frequency_penalty", m_frequency},
    {"logit_bias", m_bias_value},
    {"logit_bias", m_bias_id},
    {"logit_bias", m_bias_neg_id},
    {"logit_bias", m_bias_dup},
    {"logit_bias", m_bias_count},
    {"max_tokens", m_max_tokens},
    {"min_tokens", m_min_tokens_neg},
    {"min_tokens", m_min_tokens_gt_max},
    {"stop", m_stop_empty},
    {"stop", m_stop_utf8},
    {"stop", m_stop_surrogate},
    {"stop", m_stop_count},
    {"stop_token_ids", m_stop_ids},
    {"logprobs", m_logprobs},
    {"logprobs", m_logprobs_neg},
    {"candidates", m_candidates},
};

START_TEST(test_validate_refuses_out_of_range_with_param_name) {
    struct sampling_params p;
    sampling_params_init_default(&p);
    bad_cases[_i].mutate(&p);
    const char *param = NULL;
    char msg[200] = "";
    ck_assert_int_eq(sampling_params_validate(&p, 1000, &param, msg, sizeof(msg)), -1);
    ck_assert_str_eq(param, bad_cases[_i].param);
    ck_assert(strlen(msg) > 0);
    /* sampler_create refuses the same params. */
    char err[200];
    ck_assert_ptr_null(sampler_create(&p, 0, 1000, NULL, 0, NULL, 0, err, sizeof(err)));
}
END_TEST

START_TEST(test_validate_accepts_range_edges) {
    struct sampling_params p;
    sampling_params_init_default(&p);
    const char *param = NULL;
    ck_assert_int_eq(sampling_params_validate(&p, 1000, &param, NULL, 0), 0);
    p.temperature = 2.0f;
    p.top_k = -1;
    p.top_p = 1.0f;
    p.min_p = 0.999f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.repetition_penalty = 0.01f;
    p.logprobs = 20;
    p.min_tokens = p.max_tokens;
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 999, -100.0f), 0);
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 0, 100.0f), 0);
    ck_assert_int_eq(sampling_params_add_stop(&p, "\xe2\x9c\x93 done", 8), 0);
    ck_assert_int_eq(sampling_params_validate(&p, 1000, &param, NULL, 0), 0);
    p.temperature = 0.0f;
    ck_assert_int_eq(sampling_params_validate(&p, 1000, &param, NULL, 0), 0);
}
END_TEST

START_TEST(test_params_adders_refuse_overflow) {
    struct sampling_params p;
    sampling_params_init_default(&p);
    char big[SAMPLING_MAX_STOP_BYTES + 1];
    memset(big, 'x', sizeof(big));
    ck_assert_int_eq(sampling_params_add_stop(&p, big, sizeof(big)), -1);
    ck_assert_int_eq(sampling_params_add_stop(&p, big, 0), -1);
    ck_assert_int_eq(sampling_params_add_stop(&p, big, SAMPLING_MAX_STOP_BYTES), 0);
    ck_assert_int_eq((int)strlen(p.stop[0]), SAMPLING_MAX_STOP_BYTES);
    for (int i = 1; i < SAMPLING_MAX_STOP; i++) {
        ck_assert_int_eq(sampling_params_add_stop(&p, "a", 1), 0);
    }
    ck_assert_int_eq(sampling_params_add_stop(&p, "a", 1), -1);
    for (int i = 0; i < SAMPLING_MAX_LOGIT_BIAS; i++) {
        ck_assert_int_eq(sampling_params_add_logit_bias(&p, i, 1.0f), 0);
    }
    ck_assert_int_eq(sampling_params_add_logit_bias(&p, 0, 1.0f), -1);
    for (int i = 0; i < SAMPLING_MAX_STOP_TOKEN_IDS; i++) {
        ck_assert_int_eq(sampling_params_add_stop_token_id(&p, i), 0);
    }
    ck_assert_int_eq(sampling_params_add_stop_token_id(&p, 0), -1);
    const char *param;
    ck_assert_int_eq(sampling_params_validate(&p, 1000, &param, NULL, 0), 0);
}
END_TEST

static Suite *sampling_suite(void) {
    Suite *s = suite_create("sampling");
    TCase *tc = tcase_create("distribution");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_sample_matches_softmax_at_temperature, 0,
                        sizeof(temperatures) / sizeof(temperatures[0]));
    tcase_add_test(tc, test_sample_top_k_matches_renormalised_top_k);
    tcase_add_test(tc, test_sample_top_p_matches_renormalised_nucleus);
    tcase_add_test(tc, test_sample_min_p_matches_renormalised_survivors);
    tcase_add_test(tc, test_rng_streams_are_reproducible_and_uniform);
    suite_add_tcase(s, tc);

    tc = tcase_create("filters");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sample_top_k_never_leaves_top_k);
    tcase_add_test(tc, test_sample_top_p_keeps_exactly_the_nucleus);
    tcase_add_test(tc, test_sample_top_p_reaches_every_nucleus_member_only);
    tcase_add_test(tc, test_sample_top_p_takes_just_enough_tied_tokens);
    tcase_add_test(tc, test_sample_min_p_reaches_every_survivor_only);
    tcase_add_test(tc, test_nucleus_is_small_when_sure_and_large_when_unsure);
    tcase_add_test(tc, test_temperature_zero_is_argmax_after_bias);
    tcase_add_test(tc, test_sample_returns_minus_one_when_every_token_is_banned);
    suite_add_tcase(s, tc);

    tc = tcase_create("processors");
    tcase_add_test(tc, test_logit_bias_adds_exactly_and_minus_100_bans);
    tcase_add_test(tc, test_repetition_penalty_divides_positive_multiplies_negative_over_prompt);
    tcase_add_test(tc, test_presence_and_frequency_penalties_count_generated_tokens_only);
    tcase_add_test(tc, test_penalties_apply_after_bias_in_documented_order);
    tcase_add_test(tc, test_min_tokens_bans_eos_and_stop_ids_then_they_finish);
    tcase_add_test(tc, test_every_end_token_ends_and_is_banned_by_min_tokens);
    tcase_add_test(tc, test_logprobs_are_raw_log_softmax_with_top_alternatives);
    suite_add_tcase(s, tc);

    tc = tcase_create("seeds");
    tcase_add_test(tc, test_same_seed_same_tokens_different_seed_different_tokens);
    tcase_add_test(tc, test_one_draw_per_token_whatever_the_logits);
    suite_add_tcase(s, tc);

    tc = tcase_create("validation");
    tcase_add_loop_test(tc, test_validate_refuses_out_of_range_with_param_name, 0,
                        sizeof(bad_cases) / sizeof(bad_cases[0]));
    tcase_add_test(tc, test_validate_accepts_range_edges);
    tcase_add_test(tc, test_params_adders_refuse_overflow);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(sampling_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
