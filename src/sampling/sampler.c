/*
 * sampler.c: one sequence's sampler: logits processors, the draw, logprobs, token-level stops.
 *
 * DESIGN. The engine thread calls sampler_sample() for every generated token of every running
 * sequence, so it must cost a few percent of a decode step at most and allocate nothing. Every
 * buffer is made in sampler_create(), sized by the vocabulary V:
 *   work  (V,) float   the logits after bias and penalties, then (pure temperature path) the
 *                      unnormalised probabilities exp((l - max) / T)
 *   cands (V,) {p, id} survivors of top-k / top-p / min-p (only when a filter or the candidates
 *                      report is on)
 *   counts, in_prompt, seen (V,) penalty bookkeeping (only when a penalty is on); `seen` lists
 *                      the distinct ids the penalties touch, so applying them costs O(distinct
 *                      tokens), not O(V)
 * The raw logits are never written: logprobs need them, and the engine's logits row stays
 * untouched for whoever else reads it (prompt logprobs, tests).
 *
 * No full sort of V anywhere (numbers in docs/PERFORMANCE.md):
 *   - every pass over V is a plain loop GCC vectorizes where it can; exp is exp_neg(), a
 *     branch-free polynomial, because libm's expf is a scalar call per token;
 *   - top-k: a size-k min-heap (one predictable compare per token); above k = 1024, a
 *     quickselect (three-way partitions, median-of-three pivots, expected O(V));
 *   - top-p: a histogram of probability mass over 8 bins per octave finds the bin where the
 *     mass accumulated from the top crosses the target; bins above are in, bins below out, and
 *     only the crossing bin is partitioned (select_nucleus: quickselect driven by mass);
 *   - min-p: one threshold (p_max is exactly 1 after subtracting the max logit);
 *   - the draw: a scan of the survivors, or, with no filter, of 256-token blocks by their sums
 *     and then one block.
 * Everything is deterministic (fixed summation orders, no random pivots), so identical logits
 * give an identical candidate order and, with the same draw, the same token — which is all
 * that batch invariance needs from this module.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/sampling.h>

#define EXP_NEG_MIN    (-87.0f) /* exp(-87) = 1.6e-38: the smallest normal float is 1.2e-38 */
#define SUM_BLOCK      256
#define HIST_BINS      1017 /* prob_bin(1.0f) = 0x3f800000 >> 20 = 1016 */
#define HEAP_TOP_K_MAX 1024 /* above, top-k is a quickselect */

struct cand {
    float p; /* a logit during top-k, then an unnormalised probability */
    int32_t id;
};

struct sampler {
    struct sampling_params params; /* owned copy */
    int32_t n_vocab;
    int32_t eos_ids[SAMPLING_MAX_EOS]; /* tokens that end the sequence (unless ignore_eos) */
    int32_t n_eos;
    uint64_t seed;
    struct rng rng;
    int32_t n_generated;

    bool has_filters;   /* top_k, top_p, min_p or the candidates report: cands is used */
    bool has_rep;       /* repetition_penalty != 1 */
    bool has_freq_pres; /* presence or frequency penalty != 0 */

    float *work;        /* (V,) */
    struct cand *cands; /* (V,) or NULL */
    int32_t *counts;    /* (V,) times each token was generated, or NULL */
    uint8_t *in_prompt; /* (V,) 1 when the token occurs in the prompt, or NULL (no rep penalty) */
    int32_t *seen;      /* (V,) the distinct ids with in_prompt or counts > 0, or NULL */
    int32_t n_seen;
    double *block_sum; /* (n_blocks,) sums of SUM_BLOCK probabilities, for the full draw */
    int32_t n_blocks;
    double hist_mass[HIST_BINS]; /* top-p's mass histogram */
};

static void set_err(char *err, size_t err_size, const char *msg) {
    if (err != NULL && err_size > 0) {
        snprintf(err, err_size, "%s", msg);
    }
}

/* Makes token end the sequence too; duplicates and ids outside the vocabulary are ignored. */
static void add_eos(struct sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab || s->n_eos == SAMPLING_MAX_EOS) {
        return;
    }
    for (int32_t i = 0; i < s->n_eos; i++) {
        if (s->eos_ids[i] == token) {
            return;
        }
    }
    s->eos_ids[s->n_eos++] = token;
}

struct sampler *sampler_create(const struct sampling_params *p, int32_t i_choice, int32_t n_vocab,
                               const int32_t *eos_ids, int32_t n_eos, const int32_t *prompt_ids,
                               int32_t n_prompt, char *err, size_t err_size) {
    if (p == NULL || n_vocab <= 0 || n_prompt < 0 || (n_prompt > 0 && prompt_ids == NULL) ||
        i_choice < 0 || n_eos < 0 || (n_eos > 0 && eos_ids == NULL)) {
        set_err(err, err_size, "sampler_create: bad arguments");
        return NULL;
    }
    const char *param = NULL;
    char msg[160];
    if (sampling_params_validate(p, n_vocab, &param, msg, sizeof(msg)) != 0) {
        set_err(err, err_size, msg);
        return NULL;
    }
    struct sampler *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        goto fail_alloc;
    }
    s->params = *p;
    s->n_vocab = n_vocab;
    for (int32_t i = 0; i < n_eos; i++) {
        add_eos(s, eos_ids[i]);
    }
    s->seed = p->has_seed ? p->seed + (uint64_t)i_choice : sampling_seed_random();
    rng_seed(&s->rng, s->seed);
    s->has_filters = (p->top_k > 0 && p->top_k < n_vocab) || p->top_p < 1.0f || p->min_p > 0.0f ||
                     p->candidates > 0;
    s->has_rep = p->repetition_penalty != 1.0f;
    s->has_freq_pres = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;

    size_t v = (size_t)n_vocab;
    s->n_blocks = (n_vocab + SUM_BLOCK - 1) / SUM_BLOCK;
    s->work = malloc(v * sizeof(*s->work));
    s->block_sum = malloc((size_t)s->n_blocks * sizeof(*s->block_sum));
    if (s->work == NULL || s->block_sum == NULL) {
        goto fail_alloc;
    }
    if (s->has_filters) {
        s->cands = malloc(v * sizeof(*s->cands));
        if (s->cands == NULL) {
            goto fail_alloc;
        }
    }
    if (s->has_rep || s->has_freq_pres) {
        s->counts = calloc(v, sizeof(*s->counts));
        s->seen = malloc(v * sizeof(*s->seen));
        if (s->counts == NULL || s->seen == NULL) {
            goto fail_alloc;
        }
    }
    if (s->has_rep) {
        /* The repetition penalty also covers the prompt (HF / CTRL); presence and frequency
         * count generated tokens only (OpenAI). */
        s->in_prompt = calloc(v, 1);
        if (s->in_prompt == NULL) {
            goto fail_alloc;
        }
        for (int32_t i = 0; i < n_prompt; i++) {
            int32_t t = prompt_ids[i];
            if (t >= 0 && t < n_vocab && !s->in_prompt[t]) {
                s->in_prompt[t] = 1;
                s->seen[s->n_seen++] = t;
            }
        }
    }
    return s;

fail_alloc:
    set_err(err, err_size, "sampler_create: out of memory");
    sampler_destroy(s);
    return NULL;
}

void sampler_destroy(struct sampler *s) {
    if (s == NULL) {
        return;
    }
    free(s->work);
    free(s->block_sum);
    free(s->cands);
    free(s->counts);
    free(s->in_prompt);
    free(s->seen);
    free(s);
}

int32_t sampler_n_generated(const struct sampler *s) {
    return s->n_generated;
}

uint64_t sampler_seed(const struct sampler *s) {
    return s->seed;
}

static bool is_eos(const struct sampler *s, int32_t token) {
    for (int32_t i = 0; i < s->n_eos; i++) {
        if (s->eos_ids[i] == token) {
            return true;
        }
    }
    return false;
}

enum sampler_finish sampler_accept(struct sampler *s, int32_t token) {
    bool may_stop = s->n_generated >= s->params.min_tokens;
    s->n_generated++;
    if (token >= 0 && token < s->n_vocab && s->counts != NULL) {
        bool was_seen = s->counts[token] > 0 || (s->in_prompt != NULL && s->in_prompt[token]);
        s->counts[token]++;
        if (!was_seen) {
            s->seen[s->n_seen++] = token;
        }
    }
    if (may_stop) {
        if (is_eos(s, token) && !s->params.ignore_eos) {
            return SAMPLER_FINISH_EOS;
        }
        for (int32_t i = 0; i < s->params.n_stop_token_ids; i++) {
            if (token == s->params.stop_token_ids[i]) {
                return SAMPLER_FINISH_STOP_TOKEN;
            }
        }
    }
    if (s->n_generated >= s->params.max_tokens) {
        return SAMPLER_FINISH_LENGTH;
    }
    return SAMPLER_CONTINUE;
}

/* Steps 1-2 of the pipeline on s->work (V,), in place; touches only the listed ids. */
static void apply_bias_and_penalties(struct sampler *s) {
    const struct sampling_params *p = &s->params;
    float *w = s->work;
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const struct sampling_logit_bias *b = &p->logit_bias[i];
        /* Exactly -100 is a ban, not "very unlikely": the token must never appear. */
        w[b->token_id] = b->bias == SAMPLING_BIAS_BAN ? -INFINITY : w[b->token_id] + b->bias;
    }
    if (s->n_generated < p->min_tokens) {
        for (int32_t i = 0; i < s->n_eos && !p->ignore_eos; i++) {
            w[s->eos_ids[i]] = -INFINITY;
        }
        for (int32_t i = 0; i < p->n_stop_token_ids; i++) {
            w[p->stop_token_ids[i]] = -INFINITY;
        }
    }
    if (s->seen == NULL) {
        return;
    }
    float r = p->repetition_penalty;
    float fp = p->frequency_penalty;
    float pp = p->presence_penalty;
    for (int32_t i = 0; i < s->n_seen; i++) {
        int32_t t = s->seen[i];
        float l = w[t];
        if (s->has_rep) {
            /* Every seen token is in the prompt or generated, so the rule applies to all. */
            l = l > 0.0f ? l / r : l * r;
        }
        int32_t c = s->counts[t];
        if (c > 0) {
            l -= fp * (float)c + pp;
        }
        w[t] = l;
    }
}

static void swap_cand(struct cand *a, struct cand *b) {
    struct cand t = *a;
    *a = *b;
    *b = t;
}

static float median3(float a, float b, float c) {
    if (a > b) {
        float t = a;
        a = b;
        b = t;
    }
    /* now a <= b */
    if (c <= a) {
        return a;
    }
    return c < b ? c : b;
}

/*
 * Three-way partition of c[lo, hi) around pivot, largest first: on return c[lo, *lt) > pivot,
 * c[*lt, *gt) == pivot, c[*gt, hi) < pivot. *mass_gt is the sum of p over the first group,
 * summed in a fixed order.
 */
static void partition3(struct cand *c, int32_t lo, int32_t hi, float pivot, int32_t *lt,
                       int32_t *gt, double *mass_gt) {
    int32_t i = lo;
    int32_t a = lo;
    int32_t b = hi;
    double mass = 0.0;
    while (i < b) {
        if (c[i].p > pivot) {
            mass += c[i].p;
            swap_cand(&c[a], &c[i]);
            a++;
            i++;
        } else if (c[i].p < pivot) {
            b--;
            swap_cand(&c[i], &c[b]);
        } else {
            i++;
        }
    }
    *lt = a;
    *gt = b;
    *mass_gt = mass;
}

/* Reorders c[0, n) so that c[0, k) holds k largest values (in no particular order). */
static void select_top(struct cand *c, int32_t n, int32_t k) {
    int32_t lo = 0;
    int32_t hi = n;
    while (hi - lo > 1 && lo < k && k < hi) {
        float pivot = median3(c[lo].p, c[lo + (hi - lo) / 2].p, c[hi - 1].p);
        int32_t lt;
        int32_t gt;
        double unused;
        partition3(c, lo, hi, pivot, &lt, &gt, &unused);
        if (k < lt) {
            hi = lt;
        } else if (k <= gt) {
            return;
        } else {
            lo = gt;
        }
    }
}

/*
 * Top-p without sorting: reorders c[0, n) (unnormalised probabilities) and returns m such that
 * c[0, m) is a smallest set of largest values whose mass reaches target. Quickselect on mass:
 * partition around a pivot; if the larger group alone reaches the target, look inside it;
 * else take it (and, if that suffices, just enough of the pivot's ties) and look to the right.
 */
static int32_t select_nucleus(struct cand *c, int32_t n, double target) {
    int32_t lo = 0; /* c[0, lo) is taken and its mass already subtracted from target */
    int32_t hi = n; /* the answer lies in [lo, hi] */
    while (lo < hi) {
        float pivot = median3(c[lo].p, c[lo + (hi - lo) / 2].p, c[hi - 1].p);
        int32_t lt;
        int32_t gt;
        double mass_gt;
        partition3(c, lo, hi, pivot, &lt, &gt, &mass_gt);
        if (mass_gt >= target) {
            hi = lt; /* non-empty: target > 0 */
            continue;
        }
        double mass_eq = (double)pivot * (double)(gt - lt);
        if (mass_gt + mass_eq >= target) {
            double acc = mass_gt;
            int32_t j = lt;
            while (j < gt && acc < target) {
                acc += pivot;
                j++;
            }
            return j;
        }
        target -= mass_gt + mass_eq;
        lo = gt;
    }
    /* Only by rounding (the mass fell short of the target by an ulp): everything taken. */
    return lo;
}

/* The k (<= kmax) largest of c[0, n) into out, largest first, ties to the lower id. O(n k). */
static int32_t top_candidates(const struct cand *c, int32_t n, int32_t k, double total,
                              struct sampling_candidate *out) {
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        float p = c[i].p;
        int32_t id = c[i].id;
        if (m == k &&
            !(p > out[m - 1].prob || (p == out[m - 1].prob && id < out[m - 1].token_id))) {
            continue;
        }
        int32_t j = m < k ? m++ : k - 1;
        while (j > 0 &&
               (p > out[j - 1].prob || (p == out[j - 1].prob && id < out[j - 1].token_id))) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].prob = p;
        out[j].token_id = id;
    }
    for (int32_t i = 0; i < m; i++) {
        out[i].prob = (float)((double)out[i].prob / total);
    }
    return m;
}

/*
 * exp(x) for x <= 0, the only range the sampler needs (logit - max). Cody-Waite reduction
 * x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial (relative error
 * below 2e-7, about libm's), and 2^n built in the float's exponent field. Why not expf: libm's
 * expf is a scalar call per element (GCC vectorizes it only with -ffast-math), and 50257 of
 * them were most of the sampler's time. Written without branches or float ternaries (which GCC
 * keeps as branches without -ffinite-math-only) so that the loops calling it vectorize even
 * for baseline x86-64. Out of range — x < -87 (2^n would leave the normal floats), x > 0, -inf,
 * NaN — the garbage computed is masked to 0 at the end; integer work is unsigned, so no UB.
 * exp_neg(0) is exactly 1.
 */
static inline float exp_neg(float x) {
    /* Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits. */
    float t = x * 1.44269504f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693145752f; /* ln 2, high part (exact product for |n| <= 126) */
    r = r - n * 1.42860677e-6f;     /* ln 2, low part */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t t_bits;
    memcpy(&t_bits, &t, sizeof(t_bits));
    uint32_t scale_bits = (t_bits - 0x4b400000u + 127u) << 23; /* 2^n for n in [-126, 0] */
    float scale;
    memcpy(&scale, &scale_bits, sizeof(scale));
    float y = p * scale;
    uint32_t y_bits;
    memcpy(&y_bits, &y, sizeof(y_bits));
    uint32_t keep = (uint32_t)(x >= EXP_NEG_MIN) & (uint32_t)(x <= 0.0f);
    y_bits &= 0u - keep;
    memcpy(&y, &y_bits, sizeof(y));
    return y;
}

/* out[i] = exp_neg((in[i] - max) * inv_t) over n elements; vectorized. */
static void exp_row(const float *in, float *out, int32_t n, float max, float inv_t) {
    for (int32_t i = 0; i < n; i++) {
        out[i] = exp_neg((in[i] - max) * inv_t);
    }
}

/* Sum in double with four accumulators: a fixed order (reproducible) without one long chain
 * of dependent adds. */
static double sum_floats(const float *p, int32_t n) {
    double a0 = 0.0;
    double a1 = 0.0;
    double a2 = 0.0;
    double a3 = 0.0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    for (; i < n; i++) {
        a0 += p[i];
    }
    return (a0 + a1) + (a2 + a3);
}

static double sum_cands(const struct cand *c, int32_t n) {
    double a0 = 0.0;
    double a1 = 0.0;
    int32_t i = 0;
    for (; i + 2 <= n; i += 2) {
        a0 += c[i].p;
        a1 += c[i + 1].p;
    }
    for (; i < n; i++) {
        a0 += c[i].p;
    }
    return a0 + a1;
}

float sampling_logprobs(const float *logits, int32_t v, int32_t token, int32_t k,
                        struct sampling_logprob *top, int32_t *n_top, float *scratch) {
    float max = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    exp_row(logits, scratch, v, max, 1.0f);
    double sum = sum_floats(scratch, v);
    int32_t m = 0;
    for (int32_t i = 0; i < v && k > 0; i++) {
        float l = logits[i];
        /* Keep the k largest, largest first; scanning ids upwards, a later id enters only when
         * strictly larger, so ties go to the lower id. NaN never compares larger. */
        if (m == k ? !(l > top[m - 1].logprob) : !(l > -INFINITY)) {
            continue;
        }
        int32_t j = m < k ? m++ : k - 1;
        while (j > 0 && l > top[j - 1].logprob) {
            top[j] = top[j - 1];
            j--;
        }
        top[j].logprob = l;
        top[j].token_id = i;
    }
    float lse = max + (float)log(sum);
    for (int32_t i = 0; i < m; i++) {
        top[i].logprob -= lse;
    }
    *n_top = m;
    return logits[token] - lse;
}

/* Greedy: the first (lowest) id with the largest finite value, or -1. */
static int32_t argmax(const float *w, int32_t v) {
    int32_t best = -1;
    float best_l = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        if (w[i] > best_l && isfinite(w[i])) {
            best_l = w[i];
            best = i;
        }
    }
    return best;
}

/* Temperature only: work becomes the unnormalised probabilities; the draw skips whole blocks
 * by their sums and scans one. */
static int32_t draw_full(struct sampler *s, float max, double u, int32_t *n_survivors) {
    float *w = s->work;
    int32_t v = s->n_vocab;
    exp_row(w, w, v, max, 1.0f / s->params.temperature);
    double total = 0.0;
    int32_t n = 0;
    for (int32_t b = 0; b < s->n_blocks; b++) {
        int32_t lo = b * SUM_BLOCK;
        int32_t len = v - lo < SUM_BLOCK ? v - lo : SUM_BLOCK;
        s->block_sum[b] = sum_floats(w + lo, len);
        total += s->block_sum[b];
    }
    for (int32_t i = 0; i < v; i++) {
        n += w[i] > 0.0f;
    }
    *n_survivors = n;
    double r = u * total;
    double acc = 0.0;
    for (int32_t b = 0; b < s->n_blocks; b++) {
        if (acc + s->block_sum[b] <= r) {
            acc += s->block_sum[b];
            continue;
        }
        int32_t lo = b * SUM_BLOCK;
        int32_t hi = v - lo < SUM_BLOCK ? v : lo + SUM_BLOCK;
        for (int32_t i = lo; i < hi; i++) {
            acc += w[i];
            if (acc > r) { /* acc was <= r, so w[i] > 0 */
                return i;
            }
        }
        /* Rounding: the block's sum and its running sum differ in the last bits; go on. */
    }
    for (int32_t i = v - 1; i >= 0; i--) { /* rounding at the very top of the mass */
        if (w[i] > 0.0f) {
            return i;
        }
    }
    return -1;
}

/* Sift-down for a min-heap of candidates ordered by p. */
static void heap_sift_down(struct cand *h, int32_t m, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1;
        if (l >= m) {
            return;
        }
        int32_t smallest = l + 1 < m && h[l + 1].p < h[l].p ? l + 1 : l;
        if (!(h[smallest].p < h[i].p)) {
            return;
        }
        swap_cand(&h[i], &h[smallest]);
        i = smallest;
    }
}

/* The k largest positive values of w (v,) into h[0, k) (heap order), by a size-k min-heap:
 * one predictable compare per token and O(k log(V / k) log k) heap work. Returns how many. */
static int32_t heap_top_k(const float *w, int32_t v, int32_t k, struct cand *h) {
    int32_t m = 0;
    for (int32_t i = 0; i < v; i++) {
        float p = w[i];
        if (m == k ? !(p > h[0].p) : !(p > 0.0f)) {
            continue;
        }
        if (m < k) {
            int32_t j = m++;
            h[j].p = p;
            h[j].id = i;
            while (j > 0 && h[(j - 1) / 2].p > h[j].p) {
                swap_cand(&h[j], &h[(j - 1) / 2]);
                j = (j - 1) / 2;
            }
        } else {
            h[0].p = p;
            h[0].id = i;
            heap_sift_down(h, m, 0);
        }
    }
    return m;
}

/* A float in (0, 1] to one of HIST_BINS ordered bins: its exponent and 3 mantissa bits, i.e.
 * 8 bins per octave. */
static int32_t prob_bin(float p) {
    uint32_t bits;
    memcpy(&bits, &p, sizeof(bits));
    return (int32_t)(bits >> 20);
}

/*
 * With c[0, n) holding only bins >= b_cross: moves the bins above b_cross to the front (they are
 * all in the nucleus), then takes just enough of the crossing bin for the remaining target.
 * Returns the nucleus size. The partition swaps unconditionally and advances by the predicate:
 * members are a data-dependent fraction, so a branch here mispredicts often.
 */
static int32_t split_at_bin(struct cand *c, int32_t n, int32_t b_cross, double rest) {
    int32_t n_in = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t is_in = prob_bin(c[i].p) > b_cross;
        swap_cand(&c[n_in], &c[i]);
        n_in += is_in;
    }
    return n_in + select_nucleus(c + n_in, n - n_in, rest);
}

/* The bin where the mass, accumulated from the top bin down, reaches target (-1 if it never
 * does), and in *above the mass of the bins above it. */
static int32_t find_cross_bin(const double *mass, double target, double *above) {
    double acc = 0.0;
    for (int32_t b = HIST_BINS - 1; b >= 0; b--) {
        if (acc + mass[b] >= target) {
            *above = acc;
            return b;
        }
        acc += mass[b];
    }
    *above = acc;
    return -1;
}

/*
 * Top-p over c[0, n): reorders it and returns m such that c[0, m) is the nucleus for target.
 * A mass histogram over 8-bins-per-octave finds the bin where the cumulative mass (from the top)
 * crosses the target: bins above are in, bins below out, and only the crossing bin's few
 * members go through the partition-based select_nucleus. O(n) with predictable branches.
 */
static int32_t nucleus_hist(struct sampler *s, struct cand *c, int32_t n, double target) {
    if (n <= 512) {
        return select_nucleus(c, n, target);
    }
    double *mass = s->hist_mass;
    memset(mass, 0, HIST_BINS * sizeof(*mass));
    for (int32_t i = 0; i < n; i++) {
        mass[prob_bin(c[i].p)] += c[i].p;
    }
    double above;
    int32_t b_cross = find_cross_bin(mass, target, &above);
    if (b_cross < 0) {
        return n; /* rounding: the target is the whole mass */
    }
    int32_t n_keep = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t keep = prob_bin(c[i].p) >= b_cross;
        swap_cand(&c[n_keep], &c[i]);
        n_keep += keep;
    }
    return split_at_bin(c, n_keep, b_cross, target - above);
}

/* Steps 4-7 over the candidate list. */
static int32_t draw_filtered(struct sampler *s, float max, double u, struct sample_result *out) {
    const struct sampling_params *p = &s->params;
    float *w = s->work;
    struct cand *c = s->cands;
    int32_t v = s->n_vocab;
    exp_row(w, w, v, max, 1.0f / p->temperature);
    int32_t n;
    double total; /* the mass top_p's target is a fraction of */
    bool is_top_k = p->top_k > 0 && p->top_k < v;
    if (is_top_k) {
        if (p->top_k <= HEAP_TOP_K_MAX) {
            n = heap_top_k(w, v, p->top_k, c);
        } else {
            n = 0;
            for (int32_t i = 0; i < v; i++) {
                c[n].p = w[i];
                c[n].id = i;
                n += w[i] > 0.0f;
            }
            if (p->top_k < n) {
                select_top(c, n, p->top_k);
                n = p->top_k;
            }
        }
        total = sum_cands(c, n);
    } else {
        total = 0.0;
        /* top_p: a mass histogram over the whole row (see nucleus_hist) finds the crossing
         * bin first, so that only the crossing bin and those above it — a few thousand
         * tokens at most — are copied out; min_p keeps p >= min_p (p_max is 1). Dropping
         * min_p's losers before top_p changes nothing: both keep a prefix of the sorted
         * order, the result is the shorter one, and top_p's target stays a fraction of the
         * full mass. */
        int32_t b_min = 0;
        double above = 0.0;
        bool is_split = false;
        if (p->top_p < 1.0f) {
            double *mass = s->hist_mass;
            memset(mass, 0, HIST_BINS * sizeof(*mass));
            for (int32_t i = 0; i < v; i++) {
                mass[prob_bin(w[i])] += w[i];
            }
            for (int32_t b = 0; b < HIST_BINS; b++) { /* the total without another pass */
                total += mass[b];
            }
            int32_t b_cross = find_cross_bin(mass, (double)p->top_p * total, &above);
            if (b_cross >= 0) {
                b_min = b_cross;
                is_split = true;
            }
        }
        float min_p = p->min_p;
        n = 0;
        for (int32_t i = 0; i < v; i++) {
            /* A branch, not a branch-free compaction: usually few tokens pass (the nucleus
             * and min_p survivors are a small fraction of V), so it is well predicted, while
             * the branch-free form chains every iteration on the previous count. */
            float x = w[i];
            if (prob_bin(x) >= b_min && x >= min_p && x > 0.0f) {
                c[n].p = x;
                c[n].id = i;
                n++;
            }
        }
        if (is_split) {
            n = split_at_bin(c, n, b_min, (double)p->top_p * total - above);
        }
    }
    if (p->top_p < 1.0f && is_top_k) {
        n = nucleus_hist(s, c, n, (double)p->top_p * total);
    }
    if (p->min_p > 0.0f) {
        /* p_max is exactly 1: the largest logit is max, exp_neg(0) = 1, and it survives top-k
         * and top-p, which keep largest values. */
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++) {
            c[m] = c[i];
            m += (int32_t)(c[i].p >= p->min_p);
        }
        n = m;
    }
    double kept = sum_cands(c, n);
    out->n_survivors = n;
    if (p->candidates > 0) {
        out->n_candidates = top_candidates(c, n, p->candidates, kept, out->candidates);
    }
    double r = u * kept;
    double acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (acc > r) {
            return c[i].id;
        }
    }
    return n > 0 ? c[n - 1].id : -1; /* rounding; n >= 1 because the maximum always survives */
}

void sampler_processed_logits(struct sampler *s, const float *logits, float *out) {
    memcpy(s->work, logits, (size_t)s->n_vocab * sizeof(*s->work));
    apply_bias_and_penalties(s);
    memcpy(out, s->work, (size_t)s->n_vocab * sizeof(*out));
}

int32_t sampler_sample(struct sampler *s, const float *logits, struct sample_result *out) {
    const struct sampling_params *p = &s->params;
    out->token_id = -1;
    out->has_logprobs = false;
    out->logprob = 0.0f;
    out->n_top_logprobs = 0;
    out->n_survivors = 0;
    out->n_candidates = 0;

    /* Exactly one draw per call, first, whatever the path: token i always uses draw i. */
    double u = rng_next_double(&s->rng);

    memcpy(s->work, logits, (size_t)s->n_vocab * sizeof(*s->work));
    apply_bias_and_penalties(s);

    int32_t token;
    if (p->temperature == 0.0f) {
        token = argmax(s->work, s->n_vocab);
        if (token >= 0) {
            out->n_survivors = 1;
            if (p->candidates > 0) {
                out->n_candidates = 1;
                out->candidates[0].token_id = token;
                out->candidates[0].prob = 1.0f;
            }
        }
    } else {
        int32_t i_max = argmax(s->work, s->n_vocab);
        if (i_max < 0) {
            token = -1;
        } else if (s->has_filters) {
            token = draw_filtered(s, s->work[i_max], u, out);
        } else {
            token = draw_full(s, s->work[i_max], u, &out->n_survivors);
        }
    }
    if (token < 0) {
        return -1;
    }
    out->token_id = token;
    if (p->logprobs >= 0) {
        out->logprob = sampling_logprobs(logits, s->n_vocab, token, p->logprobs, out->top_logprobs,
                                         &out->n_top_logprobs, s->work);
        out->has_logprobs = true;
    }
    return token;
}
