/*
 * bench_sampling.c: cost of one sampler_sample() + sampler_accept() at GPT-2's vocabulary size.
 *
 * Not a test: prints microseconds per token for each configuration so that docs/PERFORMANCE.md
 * can compare them with a batch-1 decode step of the 124M model. Logit rows are synthetic but
 * shaped like a language model's: roughly normal (std 2) with a handful of peaks, eight
 * different rows used in turn (1.6 MB, so the row is not always hot in L1/L2, as after a real
 * forward pass). Single thread, like the engine.
 *
 * usage: bench_sampling [--vocab 50257] [--iters 3000]
 * Run under `flock /tmp/gptd-bench.lock` on a shared machine and report `uptime` beside it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/sampling.h>
#include <gptd/util.h>

#define N_ROWS 8

struct config {
    const char *name;
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    int32_t logprobs;
    int32_t candidates;
    int32_t n_stop;
};

static const struct config configs[] = {
    {"greedy (T=0)", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, -1, 0, 0},
    {"temperature 0.8 only", 0.8f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, -1, 0, 0},
    {"top_k 40", 0.8f, 40, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, -1, 0, 0},
    {"top_p 0.9", 0.8f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, -1, 0, 0},
    {"min_p 0.05", 0.8f, 0, 1.0f, 0.05f, 1.0f, 0.0f, 0.0f, -1, 0, 0},
    {"all penalties (rep 1.1, pres 0.5, freq 0.5)", 0.8f, 0, 1.0f, 0.0f, 1.1f, 0.5f, 0.5f, -1, 0,
     0},
    {"top_k 40 + top_p 0.9 + penalties", 0.8f, 40, 0.9f, 0.0f, 1.1f, 0.5f, 0.5f, -1, 0, 0},
    {"greedy + logprobs 5", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 5, 0, 0},
    {"top_p 0.9 + logprobs 5 + candidates 20", 0.8f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 5, 20, 0},
    {"top_p 0.95 + 4 stop strings (matcher)", 0.8f, 0, 0.95f, 0.0f, 1.0f, 0.0f, 0.0f, -1, 0, 4},
};

/* Roughly normal logits (sum of four uniforms), std ~2, with five peaks 6-10 above. */
static void make_row(float *l, int32_t v, uint64_t seed) {
    struct rng r;
    rng_seed(&r, seed);
    for (int32_t i = 0; i < v; i++) {
        double a = rng_next_double(&r) + rng_next_double(&r) + rng_next_double(&r) +
                   rng_next_double(&r) - 2.0;
        l[i] = (float)(a * 3.46) - 5.0f; /* 4 uniforms: std 0.577; scaled to std 2 */
    }
    for (int k = 0; k < 5; k++) {
        l[rng_next_u64(&r) % (uint64_t)v] += 6.0f + (float)k;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a;
    double y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int32_t v = 50257;
    int iters = 3000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--vocab") == 0 && i + 1 < argc) {
            v = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_sampling [--vocab 50257] [--iters 3000]\n");
            return 2;
        }
    }
    if (v < 100 || iters < 10) {
        fprintf(stderr, "bench_sampling: --vocab >= 100 and --iters >= 10\n");
        return 2;
    }
    float *rows = malloc((size_t)N_ROWS * (size_t)v * sizeof(*rows));
    int32_t *prompt = malloc(500 * sizeof(*prompt));
    double *samples = malloc((size_t)iters * sizeof(*samples));
    if (rows == NULL || prompt == NULL || samples == NULL) {
        fprintf(stderr, "bench_sampling: out of memory\n");
        return 1;
    }
    for (int r = 0; r < N_ROWS; r++) {
        make_row(rows + (size_t)r * (size_t)v, v, 1000 + (uint64_t)r);
    }
    struct rng prng;
    rng_seed(&prng, 7);
    for (int i = 0; i < 500; i++) {
        prompt[i] = (int32_t)(rng_next_u64(&prng) % (uint64_t)v);
    }
    /* Decoded text for the stop-matcher rows: short word pieces, as BPE tokens decode to. */
    static const char *const pieces[] = {" the", " cat",  " sat", " on",    " mat", ",",
                                         " and", " then", " it",  " slept", ".",    "\n"};
    static const char *const stops[] = {"\n\n", "###", "The End", "</s>"};

    printf("bench_sampling: V = %d, %d tokens per configuration, %d rotating logit rows\n", v,
           iters, N_ROWS);
    printf("%-46s %10s %10s %10s\n", "configuration", "mean us", "p50 us", "p99 us");
    for (size_t c = 0; c < sizeof(configs) / sizeof(configs[0]); c++) {
        const struct config *cf = &configs[c];
        struct sampling_params p;
        sampling_params_init_default(&p);
        p.temperature = cf->temperature;
        p.top_k = cf->top_k;
        p.top_p = cf->top_p;
        p.min_p = cf->min_p;
        p.repetition_penalty = cf->repetition_penalty;
        p.presence_penalty = cf->presence_penalty;
        p.frequency_penalty = cf->frequency_penalty;
        p.logprobs = cf->logprobs;
        p.candidates = cf->candidates;
        p.has_seed = true;
        p.seed = 42;
        p.max_tokens = iters + 100;
        for (int32_t i = 0; i < cf->n_stop; i++) {
            sampling_params_add_stop(&p, stops[i], strlen(stops[i]));
        }
        char err[200];
        struct sampler *s = sampler_create(&p, 0, v, NULL, 0, prompt, 500, err, sizeof(err));
        struct stop_matcher *m = cf->n_stop > 0 ? stop_matcher_create(&p) : NULL;
        if (s == NULL || (cf->n_stop > 0 && m == NULL)) {
            fprintf(stderr, "bench_sampling: %s\n", err);
            return 1;
        }
        struct sample_result out;
        struct stop_output so;
        double sum = 0.0;
        for (int i = -100; i < iters; i++) { /* 100 warm-up tokens */
            const float *row = rows + (size_t)((i + 100) % N_ROWS) * (size_t)v;
            int64_t t0 = time_now_us();
            int32_t t = sampler_sample(s, row, &out);
            sampler_accept(s, t);
            if (m != NULL) {
                const char *piece = pieces[(uint32_t)t % (sizeof(pieces) / sizeof(pieces[0]))];
                stop_matcher_push(m, piece, strlen(piece), true, &so);
            }
            int64_t t1 = time_now_us();
            if (i >= 0) {
                samples[i] = (double)(t1 - t0);
                sum += samples[i];
            }
        }
        qsort(samples, (size_t)iters, sizeof(*samples), cmp_double);
        printf("%-46s %10.1f %10.1f %10.1f\n", cf->name, sum / iters, samples[iters / 2],
               samples[(size_t)((double)iters * 0.99)]);
        stop_matcher_destroy(m);
        sampler_destroy(s);
    }
    free(rows);
    free(prompt);
    free(samples);
    return 0;
}
