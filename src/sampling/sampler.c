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
 * No full sort of V anywhere: top-k is a quickselect (three-way partitions, median-of-three
 * pivots; expected O(V)); top-p is the same partitioning driven by probability mass, which
 * stops at the smallest prefix whose mass reaches top_p (expected O(V)); min-p is one
 * threshold pass; the draw is a linear scan. Partitions are deterministic (no random pivots),
 * so identical logits give an identical candidate order and, with the same draw, the same
 * token — which is all that batch invariance needs from this module.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/sampling.h>

struct cand {
    float p; /* a logit during top-k, then an unnormalised probability */
    int32_t id;
};

struct sampler {
    struct sampling_params params; /* owned copy */
    int32_t n_vocab;
    int32_t eos_token_id; /* -1: none */
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
};

static void set_err(char *err, size_t err_size, const char *msg) {
    if (err != NULL && err_size > 0) {
        snprintf(err, err_size, "%s", msg);
    }
}

struct sampler *sampler_create(const struct sampling_params *p, int32_t i_choice, int32_t n_vocab,
                               int32_t eos_token_id, const int32_t *prompt_ids, int32_t n_prompt,
                               char *err, size_t err_size) {
    if (p == NULL || n_vocab <= 0 || n_prompt < 0 || (n_prompt > 0 && prompt_ids == NULL) ||
        i_choice < 0) {
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
    s->eos_token_id = eos_token_id >= 0 && eos_token_id < n_vocab ? eos_token_id : -1;
    s->seed = p->has_seed ? p->seed + (uint64_t)i_choice : sampling_seed_random();
    rng_seed(&s->rng, s->seed);
    s->has_filters = (p->top_k > 0 && p->top_k < n_vocab) || p->top_p < 1.0f || p->min_p > 0.0f ||
                     p->candidates > 0;
    s->has_rep = p->repetition_penalty != 1.0f;
    s->has_freq_pres = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;

    size_t v = (size_t)n_vocab;
    s->work = malloc(v * sizeof(*s->work));
    if (s->work == NULL) {
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
        if (token == s->eos_token_id && !s->params.ignore_eos) {
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
        if (s->eos_token_id >= 0 && !p->ignore_eos) {
            w[s->eos_token_id] = -INFINITY;
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

/* Raw logprobs: log-softmax of logits (V,), the top k of it, and the chosen token's value. */
static void fill_logprobs(const float *logits, int32_t v, int32_t k, int32_t token,
                          struct sample_result *out) {
    float max = -INFINITY;
    for (int32_t i = 0; i < v; i++) {
        if (logits[i] > max) {
            max = logits[i];
        }
    }
    double sum = 0.0;
    int32_t m = 0;
    struct sampling_logprob *top = out->top_logprobs;
    for (int32_t i = 0; i < v; i++) {
        float l = logits[i];
        if (!(l > -INFINITY)) { /* -inf and NaN: probability 0 */
            continue;
        }
        sum += expf(l - max);
        /* Keep the k largest logits, largest first; scanning ids upwards, a later id enters
         * only when strictly larger, so ties go to the lower id. */
        if (k == 0 || (m == k && !(l > top[m - 1].logprob))) {
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
    out->n_top_logprobs = m;
    out->logprob = logits[token] - lse;
    out->has_logprobs = true;
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

/* Temperature only: work becomes exp((l - max) / T); one scan of the cumulative mass. */
static int32_t draw_full(struct sampler *s, float max, double u, int32_t *n_survivors) {
    float *w = s->work;
    int32_t v = s->n_vocab;
    float inv_t = 1.0f / s->params.temperature;
    double total = 0.0;
    int32_t n = 0;
    for (int32_t i = 0; i < v; i++) {
        float l = w[i];
        float p = isfinite(l) ? expf((l - max) * inv_t) : 0.0f;
        w[i] = p;
        total += p;
        n += p > 0.0f;
    }
    *n_survivors = n;
    double r = u * total;
    double acc = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < v; i++) {
        if (w[i] > 0.0f) {
            acc += w[i];
            last = i;
            if (acc > r) {
                return i;
            }
        }
    }
    return last; /* rounding: r landed on the very top of the mass */
}

/* Steps 4-7 over the candidate list. */
static int32_t draw_filtered(struct sampler *s, float max, double u, struct sample_result *out) {
    const struct sampling_params *p = &s->params;
    const float *w = s->work;
    struct cand *c = s->cands;
    int32_t v = s->n_vocab;
    int32_t n = 0;
    for (int32_t i = 0; i < v; i++) {
        if (isfinite(w[i])) {
            c[n].p = w[i];
            c[n].id = i;
            n++;
        }
    }
    if (p->top_k > 0 && p->top_k < n) {
        /* On logits: exp is monotonic, and V - K exps are saved. */
        select_top(c, n, p->top_k);
        n = p->top_k;
    }
    float inv_t = 1.0f / p->temperature;
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        c[i].p = expf((c[i].p - max) * inv_t);
        total += c[i].p;
    }
    if (p->top_p < 1.0f) {
        n = select_nucleus(c, n, (double)p->top_p * total);
    }
    if (p->min_p > 0.0f) {
        /* p_max is exactly 1: the largest logit is max, exp(0) = 1, and it survives top-k and
         * top-p, which keep largest values. */
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++) {
            if (c[i].p >= p->min_p) {
                c[m++] = c[i];
            }
        }
        n = m;
    }
    total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        total += c[i].p;
    }
    out->n_survivors = n;
    if (p->candidates > 0) {
        out->n_candidates = top_candidates(c, n, p->candidates, total, out->candidates);
    }
    double r = u * total;
    double acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (acc > r) {
            return c[i].id;
        }
    }
    return c[n - 1].id; /* rounding; n >= 1 because the maximum always survives */
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
        fill_logprobs(logits, s->n_vocab, p->logprobs, token, out);
    }
    return token;
}
