/*
 * bench_model.c: forward-pass throughput of the model module, next to two probes of the
 * machine itself, so each number comes with the fraction of its limit it reaches:
 *   - memory read bandwidth (STREAM-like sum over 1 GiB, n threads) -> the batch-1 decode
 *     bound: weight bytes read per token / bandwidth;
 *   - best cblas_sgemm GFLOPS on a 768 x 2304 weight at M = 1 .. 512 (OpenBLAS, n threads)
 *     -> the bound for batched decode and prefill;
 *   - decode tokens/s at batch 1, 8, 32, 64 with a 128-token context, and a 512-token prefill.
 * Also checks whether OpenBLAS's sgemm rows are bit-identical across M (why gptd uses its own
 * kernels is in src/model/kernels.h).
 *
 * Usage: bench_model [MODEL_DIR] [--threads N] [--weights auto|f32|f16|bf16|q8] [--model-only]
 *                    [--batch B] [--ctx N] [--private-kv] [--prefill-only]
 *        --batch B: only decode at batch B (any size); --ctx N: decode context (default 128);
 *        --private-kv: each sequence prefills a prompt of its own instead of sharing forks of
 *        one (the server's case: attention reads every sequence's K/V from memory).
 *        (default model build/gpt2-124m-random; write it with
 *        build/tools/make-random-gpt2 build/gpt2-124m-random). Run under
 *        `flock /tmp/gptd-bench.lock` and report `uptime` with the numbers.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "../src/model/kernels.h"
#include "../src/model/pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- memory bandwidth ---- */

struct bw_arg {
    const float *data;
    size_t n;
    float sum;
};

#if defined(__x86_64__)
__attribute__((target("avx2"))) static float sum_avx2(const float *x, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(x + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#endif

static void *bw_thread(void *p) {
    struct bw_arg *a = p;
#if defined(__x86_64__)
    a->sum = sum_avx2(a->data, a->n);
#else
    float s = 0.0f;
    for (size_t i = 0; i < a->n; i++) {
        s += a->data[i];
    }
    a->sum = s;
#endif
    return NULL;
}

static double measure_bandwidth(int n_threads) {
    size_t bytes = (size_t)1 << 30;
    size_t n = bytes / sizeof(float);
    float *data = aligned_alloc(64, bytes);
    for (size_t i = 0; i < n; i++) {
        data[i] = (float)(i & 1023);
    }
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        struct bw_arg args[64];
        int64_t t0 = time_now_us();
        for (int t = 0; t < n_threads; t++) {
            args[t].data = data + n / (size_t)n_threads * (size_t)t;
            args[t].n = n / (size_t)n_threads;
            pthread_create(&th[t], NULL, bw_thread, &args[t]);
        }
        float total = 0.0f;
        for (int t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            total += args[t].sum;
        }
        double s = (double)(time_now_us() - t0) / 1e6;
        double gbs = (double)bytes / s / 1e9;
        best = gbs > best ? gbs : best;
        if (total == -1.0f) {
            printf("(impossible)\n"); /* keeps the sum alive */
        }
    }
    free(data);
    return best;
}

/* ---- cblas_sgemm ---- */

static double measure_sgemm(int m, int k, int n) {
    float *a = aligned_alloc(64, (size_t)m * k * sizeof(float));
    float *b = aligned_alloc(64, (size_t)k * n * sizeof(float));
    float *c = aligned_alloc(64, (size_t)m * n * sizeof(float));
    for (size_t i = 0; i < (size_t)m * k; i++) {
        a[i] = (float)(i % 7) * 0.1f;
    }
    for (size_t i = 0; i < (size_t)k * n; i++) {
        b[i] = (float)(i % 11) * 0.01f;
    }
    double flops = 2.0 * m * (double)k * n;
    int reps = (int)(2e9 / flops) + 3;
    double best = 0.0;
    for (int trial = 0; trial < 3; trial++) {
        int64_t t0 = time_now_us();
        for (int r = 0; r < reps; r++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f,
                        c, n);
        }
        double s = (double)(time_now_us() - t0) / 1e6;
        double g = flops * reps / s / 1e9;
        best = g > best ? g : best;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Are OpenBLAS's rows bit-identical whether computed alone (M = 1) or in a block of M? */
static int sgemm_rows_invariant(int m, int k, int n) {
    float *a = malloc((size_t)m * k * sizeof(float));
    float *b = malloc((size_t)k * n * sizeof(float));
    float *c = malloc((size_t)m * n * sizeof(float));
    float *r = malloc((size_t)n * sizeof(float));
    uint32_t s = 1;
    for (size_t i = 0; i < (size_t)m * k; i++) {
        s = s * 1664525u + 1013904223u;
        a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    }
    for (size_t i = 0; i < (size_t)k * n; i++) {
        s = s * 1664525u + 1013904223u;
        b[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    int same = 1;
    for (int i = 0; i < m && same; i++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, n, k, 1.0f, a + (size_t)i * k, k,
                    b, n, 0.0f, r, n);
        same = memcmp(r, c + (size_t)i * n, (size_t)n * sizeof(float)) == 0;
    }
    free(a);
    free(b);
    free(c);
    free(r);
    return same;
}

/* ---- gptd's own kernel on the same shapes (the pool splits column panels, as the model does) ----
 */

struct kernel_job {
    const float *x;
    const void *x_q; /* Q8: x quantized, as the model does once per matmul (timed with it) */
    const void *w;
    enum kernel_wtype wt;
    float *out;
    int32_t m, k, n, n_tasks;
    enum kernel_isa isa;
};

static void kernel_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct kernel_job *j = ctx;
    int32_t p = kernel_n_panels(j->n);
    if (j->wt == KERNEL_W_Q8) {
        kernel_matmul_q8(j->isa, j->x_q, j->w, NULL, j->out, (size_t)j->n, j->m, j->k, j->n,
                         p * i_task / j->n_tasks, p * (i_task + 1) / j->n_tasks,
                         KERNEL_EPILOGUE_STORE);
        return;
    }
    kernel_matmul(j->isa, j->x, (size_t)j->k, j->w, j->wt, NULL, j->out, (size_t)j->n, j->m, j->k,
                  j->n, p * i_task / j->n_tasks, p * (i_task + 1) / j->n_tasks,
                  KERNEL_EPILOGUE_STORE);
}

static double measure_kernel(struct pool *pool, enum kernel_wtype wt, int m, int k, int n) {
    struct kernel_job j = {.m = m, .k = k, .n = n, .isa = kernel_isa_best(), .wt = wt};
    float *x = aligned_alloc(64, (size_t)m * k * sizeof(float));
    void *w = aligned_alloc(64, kernel_packed_bytes(wt, k, n));
    float *out = aligned_alloc(64, (size_t)m * n * sizeof(float));
    for (size_t i = 0; i < (size_t)m * k; i++) {
        x[i] = (float)(i % 7) * 0.1f;
    }
    void *x_q = NULL;
    if (wt == KERNEL_W_Q8) { /* quantized from float32 weights, as the loader does */
        float *f = aligned_alloc(64, kernel_packed_floats(k, n) * sizeof(float));
        for (size_t i = 0; i < kernel_packed_floats(k, n); i++) {
            f[i] = (float)(i % 11) * 0.01f;
        }
        kernel_pack_q8(f, k, kernel_n_panels(n), w);
        free(f);
        x_q = aligned_alloc(64, (size_t)m * kernel_q8_row_bytes(k));
    }
    for (size_t i = 0; wt != KERNEL_W_Q8 && i < kernel_packed_floats(k, n); i++) {
        if (wt == KERNEL_W_F32) {
            ((float *)w)[i] = (float)(i % 11) * 0.01f;
        } else {
            ((uint16_t *)w)[i] =
                (uint16_t)(0x3c00 + i % 11); /* small normal numbers in F16 and BF16 */
        }
    }
    j.x_q = x_q;
    j.x = x;
    j.w = w;
    j.out = out;
    j.n_tasks = pool_n_threads(pool) * 4;
    double flops = 2.0 * m * (double)k * n;
    int reps = (int)(2e9 / flops) + 3;
    double best = 0.0;
    for (int trial = 0; trial < 3; trial++) {
        int64_t t0 = time_now_us();
        for (int r = 0; r < reps; r++) {
            if (x_q != NULL) {
                kernel_quantize_rows(j.isa, x, (size_t)k, m, k, x_q);
            }
            pool_run(pool, kernel_task, &j, j.n_tasks);
        }
        double s = (double)(time_now_us() - t0) / 1e6;
        double g = flops * reps / s / 1e9;
        best = g > best ? g : best;
    }
    free(x);
    free(x_q);
    free(w);
    free(out);
    return best;
}

/* ---- the model ---- */

/* Bytes of a KV pool of n_blocks blocks (KV heads x head size per position and layer). */
static size_t kv_bytes_for(const struct model *model, size_t n_blocks) {
    const struct model_config *c = model_get_config(model);
    return n_blocks * (size_t)c->n_layer * 2 * KV_BLOCK_SIZE * (size_t)c->n_kv_head *
           (size_t)c->head_dim * sizeof(float);
}

/* Weight-matmul FLOPs of one row through the blocks: q/k/v, o, and the MLP (GPT-2: up and
 * down; Llama: gate, up and down). */
static double matmul_flops_per_row(const struct model_config *c) {
    double C = c->n_embd;
    double F = c->n_inner;
    double q = (double)c->n_head * c->head_dim;
    double kv = (double)c->n_kv_head * c->head_dim;
    double mlp = c->arch == MODEL_ARCH_LLAMA ? 3 * C * F : 2 * C * F;
    return 2.0 * c->n_layer * (C * (q + 2 * kv) + q * C + mlp);
}

/* Decode tok/s at batch size b: one ctx-token prompt, forked b times (the blocks are shared:
 * attention reads as many bytes as b private copies but they stay in cache), or with is_private
 * b prompts of their own (what a server decodes: every sequence's K/V read from memory), then
 * timed greedy-free decode steps. */
static double bench_decode(struct model *model, int32_t b, int32_t ctx, int is_private,
                           double *step_ms) {
    const struct model_config *c = model_get_config(model);
    /* Blocks for the shared prompt plus each sequence's own decode tail (made per run, so the
     * pre-faulting of the pool stays proportional to the batch). */
    char err[256];
    struct kv_cache *kv = kv_cache_create(
        model,
        kv_bytes_for(model,
                     (size_t)(is_private ? b : 1) * (ctx / KV_BLOCK_SIZE + 2) + (size_t)b * 3),
        err, sizeof(err));
    if (kv == NULL) {
        fprintf(stderr, "bench_model: %s\n", err);
        exit(1);
    }
    struct model_scratch *scratch = model_scratch_create(model, ctx > b ? ctx : b, b);
    float *logits = malloc((size_t)b * c->n_vocab * sizeof(float));
    struct kv_seq *seqs = calloc((size_t)b, sizeof(*seqs));
    int32_t *prompt = malloc((size_t)ctx * sizeof(int32_t));
    int32_t *next = malloc((size_t)b * sizeof(int32_t));
    struct model_batch_seq *batch = calloc((size_t)b, sizeof(*batch));
    for (int32_t i = 0; i < ctx; i++) {
        prompt[i] = (i * 7919) % c->n_vocab;
    }
    kv_seq_init(&seqs[0], kv);
    kv_seq_reserve(kv, &seqs[0], ctx);
    struct model_batch_seq p = {.kv = &seqs[0], .tokens = prompt, .n_tokens = ctx, .n_logits = 1};
    model_forward(model, kv, scratch, &p, 1, logits);
    for (int32_t i = 1; i < b; i++) {
        kv_seq_init(&seqs[i], kv);
        if (is_private) {
            for (int32_t j = 0; j < ctx; j++) {
                prompt[j] = (j * 7919 + i * 104729) % c->n_vocab;
            }
            kv_seq_reserve(kv, &seqs[i], ctx);
            p.kv = &seqs[i];
            model_forward(model, kv, scratch, &p, 1, logits);
        } else {
            kv_seq_fork(kv, &seqs[i], &seqs[0]);
        }
    }
    int32_t n_steps = b >= 32 ? 12 : 24;
    double best = 1e30;
    int64_t t0 = 0;
    for (int32_t step = 0; step < n_steps + 2; step++) {
        if (step == 2) {
            t0 = time_now_us(); /* two warm-up steps */
        }
        int64_t ts = time_now_us();
        for (int32_t i = 0; i < b; i++) {
            next[i] = (step * 31 + i * 17) % c->n_vocab;
            if (kv_seq_reserve(kv, &seqs[i], 1) != KV_OK) {
                fprintf(stderr, "bench: KV cache too small (seq %d at %d, %d blocks free)\n", i,
                        seqs[i].n_pos, kv_cache_n_blocks_free(kv));
                exit(1);
            }
            batch[i] = (struct model_batch_seq){
                .kv = &seqs[i], .tokens = &next[i], .n_tokens = 1, .n_logits = 1};
        }
        model_forward(model, kv, scratch, batch, b, logits);
        double ms = (double)(time_now_us() - ts) / 1e3;
        best = ms < best ? ms : best;
    }
    double s = (double)(time_now_us() - t0) / 1e6;
    *step_ms = best;
    for (int32_t i = 0; i < b; i++) {
        kv_seq_finish(kv, &seqs[i]);
    }
    free(batch);
    free(next);
    free(prompt);
    free(seqs);
    free(logits);
    model_scratch_destroy(scratch);
    kv_cache_destroy(kv);
    return (double)b * n_steps / s;
}

static double bench_prefill(struct model *model, struct kv_cache *kv, int32_t n, double *best_ms) {
    const struct model_config *c = model_get_config(model);
    struct model_scratch *scratch = model_scratch_create(model, n, 1);
    float *logits = malloc((size_t)c->n_vocab * sizeof(float));
    int32_t *prompt = malloc((size_t)n * sizeof(int32_t));
    for (int32_t i = 0; i < n; i++) {
        prompt[i] = (i * 104729) % c->n_vocab;
    }
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        struct kv_seq seq;
        kv_seq_init(&seq, kv);
        kv_seq_reserve(kv, &seq, n);
        struct model_batch_seq p = {.kv = &seq, .tokens = prompt, .n_tokens = n, .n_logits = 1};
        int64_t t0 = time_now_us();
        model_forward(model, kv, scratch, &p, 1, logits);
        double ms = (double)(time_now_us() - t0) / 1e3;
        best = ms < best ? ms : best;
        kv_seq_finish(kv, &seq);
    }
    *best_ms = best;
    free(prompt);
    free(logits);
    model_scratch_destroy(scratch);
    return n / (best / 1e3);
}

/* The M of the sgemm probe. */
static const int probe_m[6] = {1, 8, 32, 64, 128, 512};

/* The sgemm probe at the largest probed M not above m (the limit a decode batch of m rows is
 * compared with). */
static double sgemm_at(const double *sgemm, int32_t m) {
    int i = 0;
    while (i < 5 && probe_m[i + 1] <= m) {
        i++;
    }
    return sgemm[i];
}

int main(int argc, char **argv) {
    const char *dir = "build/gpt2-124m-random";
    int n_threads = 2;
    int is_model_only = 0;
    int32_t only_batch = 0;
    int32_t ctx = 128;
    int is_private = 0;
    int is_prefill_only = 0;
    enum model_weights weights = MODEL_WEIGHTS_AUTO;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n_threads = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--weights") == 0 && i + 1 < argc) {
            if (model_weights_parse(argv[++i], &weights) != 0) {
                fprintf(stderr, "bench_model: --weights wants auto, f32, f16, bf16 or q8\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--model-only") == 0) {
            is_model_only = 1; /* skip the machine probes (for profiling) */
        } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            only_batch = atoi(argv[++i]); /* one decode batch size (-1: none), no prefill */
        } else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc) {
            ctx = atoi(argv[++i]); /* decode context (default 128) */
        } else if (strcmp(argv[i], "--private-kv") == 0) {
            is_private = 1; /* each sequence its own prompt instead of forks of one */
        } else if (strcmp(argv[i], "--prefill-only") == 0) {
            only_batch = -1;
            is_prefill_only = 1;
            is_model_only = 1;
        } else {
            dir = argv[i];
        }
    }
    if (ctx < 1 || ctx > 1000) {
        fprintf(stderr, "bench_model: --ctx wants 1 .. 1000\n");
        return 2;
    }
    model_set_threads(n_threads);
    openblas_set_num_threads(n_threads);

    double bw = 1.0;
    double sgemm[6] = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
    if (!is_model_only) {
        printf("== machine probes (%d threads)\n", n_threads);
        bw = measure_bandwidth(n_threads);
        printf("memory read bandwidth: %.1f GB/s\n", bw);
        for (int i = 0; i < 6; i++) {
            sgemm[i] = measure_sgemm(probe_m[i], 768, 2304);
            printf("cblas_sgemm M=%-3d K=768 N=2304: %6.1f GFLOPS\n", probe_m[i], sgemm[i]);
        }
        struct pool *pool = pool_create(n_threads);
        const enum kernel_wtype probed[] = {KERNEL_W_F32, KERNEL_W_F16, KERNEL_W_Q8};
        const char *const probed_name[] = {"f32", "f16", "q8"};
        for (int t = 0; t < 3; t++) {
            for (int i = 0; i < 6; i++) {
                double g = measure_kernel(pool, probed[t], probe_m[i], 768, 2304);
                printf("gptd kernel (%s, %s weights) M=%-3d K=768 N=2304: %6.1f GFLOPS (%.0f%% "
                       "of sgemm)\n",
                       kernel_isa_name(kernel_isa_best()), probed_name[t], probe_m[i], g,
                       100.0 * g / sgemm[i]);
            }
        }
        pool_destroy(pool);
        printf("cblas_sgemm rows bit-identical alone vs in a block of 64: %s\n",
               sgemm_rows_invariant(64, 768, 2304) ? "yes" : "no");
    }

    char err[1024];
    struct model *model = model_load_with(dir, weights, err, sizeof(err));
    if (model == NULL) {
        fprintf(stderr, "bench_model: %s\n(write it with build/tools/make-random-gpt2 %s)\n", err,
                dir);
        return 1;
    }
    const struct model_config *c = model_get_config(model);
    struct kv_cache *kv =
        kv_cache_create(model, kv_bytes_for(model, 600 / KV_BLOCK_SIZE), err, sizeof(err));
    if (kv == NULL) {
        fprintf(stderr, "bench_model: %s\n", err);
        return 1;
    }
    /* Bytes one decode step must stream: every weight but the tables it reads one row of
     * (GPT-2's positions; an untied embedding table). */
    double step_bytes = (double)model_weight_bytes(model);
    if (c->arch == MODEL_ARCH_GPT2) {
        step_bytes -= (double)c->n_ctx * c->n_embd * sizeof(float);
    }
    if (!c->is_tied) {
        step_bytes -= (double)c->n_vocab * c->n_embd * sizeof(float);
    }
    double lm_flops = 2.0 * c->n_embd * (double)c->n_vocab;
    double sgemm_best = 0.0;
    for (int i = 0; i < 6; i++) {
        sgemm_best = sgemm[i] > sgemm_best ? sgemm[i] : sgemm_best;
    }
    printf("\n== model %s: %zu params, matmul weights in %s, %.1f MB of weights streamed per "
           "decode step\n",
           dir, model_n_params(model), model_weights_name(model_get_weights(model)),
           step_bytes / 1e6);
    int32_t batches[] = {1, 8, 32, 64};
    int32_t n_batches = 4;
    if (only_batch > 0) {
        batches[0] = only_batch; /* any size, e.g. 16 to compare with 16 streams */
        n_batches = 1;
    }
    for (int i = 0; i < n_batches; i++) {
        double step_ms;
        double tps = bench_decode(model, batches[i], ctx, is_private, &step_ms);
        double sg = sgemm_at(sgemm, batches[i]);
        /* The mean over the timed steps, and the best single step: on a shared machine the best
         * step is the closer estimate of the uncontended speed. */
        double tps_best = batches[i] / (step_ms / 1e3);
        double gflops_best = tps_best * (matmul_flops_per_row(c) + lm_flops) / 1e9;
        printf("decode batch %-2d ctx %d%s: %7.1f tok/s mean, %7.1f tok/s best step (%.2f ms); "
               "%6.1f GFLOPS",
               batches[i], ctx, is_private ? " private" : "", tps, tps_best, step_ms, gflops_best);
        if (!is_model_only) {
            printf(" = %3.0f%% of sgemm at M=%d, %3.0f%% of best sgemm", 100.0 * gflops_best / sg,
                   batches[i], 100.0 * gflops_best / sgemm_best);
        }
        if (batches[i] == 1 && !is_model_only) {
            double bound = bw * 1e9 / step_bytes;
            printf("; bandwidth bound %.1f tok/s -> %.0f%% (mean %.0f%%)", bound,
                   100.0 * tps_best / bound, 100.0 * tps / bound);
        }
        printf("\n");
    }
    if (only_batch > 0 && !is_prefill_only) {
        kv_cache_destroy(kv);
        model_destroy(model);
        return 0;
    }
    double prefill_ms;
    double ptps = bench_prefill(model, kv, 512, &prefill_ms);
    double pflops = ptps * matmul_flops_per_row(c) / 1e9;
    printf("prefill 512 tokens: %8.1f tok/s (best of 4: %.1f ms), %6.1f GFLOPS (weight matmuls)",
           ptps, prefill_ms, pflops);
    if (!is_model_only) {
        printf(" = %3.0f%% of sgemm at M=512, %3.0f%% of best sgemm", 100.0 * pflops / sgemm[5],
               100.0 * pflops / sgemm_best);
    }
    printf("\n");
    kv_cache_destroy(kv);
    model_destroy(model);
    return 0;
}
