/*
 * model.c: what every architecture shares: the process-wide compute pool, the end of loading
 * and the model's lifetime, the forward scratch, the forward-pass helpers the architecture files
 * write their blocks with (matmul split over the pool, LayerNorm / RMSNorm, KV store, attention),
 * and model_forward itself: embeddings and blocks from the architecture, then the final norm and
 * the output head for the rows whose logits were asked for (contract in include/gptd/model.h).
 *
 * DESIGN
 * - Rows of all sequences are stacked into one (N, C) residual stream. Each weight matmul is ONE
 *   kernel call over all N rows, split across the pool by column panels; attention runs per
 *   (sequence, head) over that sequence's KV blocks; the final norm and the head run only on
 *   the rows whose logits were asked for. Every row's arithmetic depends only on that row (and
 *   its own sequence's cache), never on the batch around it, which is what makes a batch
 *   bit-identical to its sequences run alone.
 * - No allocation in model_forward: struct model_scratch holds every buffer.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "model_internal.h"
#include "pool.h"

/* ---- the process-wide thread pool ----
 * One pool per process, shared by every loaded model (usually one), so there is never more
 * than one set of compute threads. model_set_threads replaces it; a model therefore never keeps
 * a pointer to it but reads the current one at each pass (cur_pool), or a model loaded before
 * `--threads` took effect would run on a freed pool. */
static pthread_mutex_t g_pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct pool *) g_pool;
static int g_pool_users;
static int g_n_threads; /* 0: one per online CPU */

static int threads_wanted(void) {
    if (g_n_threads > 0) {
        return g_n_threads;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)n);
}

static struct pool *cur_pool(void) {
    return atomic_load_explicit(&g_pool, memory_order_acquire);
}

static bool pool_acquire(void) {
    pthread_mutex_lock(&g_pool_mutex);
    if (cur_pool() == NULL) {
        atomic_store_explicit(&g_pool, pool_create(threads_wanted()), memory_order_release);
    }
    bool ok = cur_pool() != NULL;
    if (ok) {
        g_pool_users++;
    }
    pthread_mutex_unlock(&g_pool_mutex);
    return ok;
}

static void pool_release(void) {
    pthread_mutex_lock(&g_pool_mutex);
    if (--g_pool_users == 0) {
        pool_destroy(cur_pool());
        atomic_store_explicit(&g_pool, NULL, memory_order_release);
    }
    pthread_mutex_unlock(&g_pool_mutex);
}

void model_set_threads(int n_threads) {
    pthread_mutex_lock(&g_pool_mutex);
    g_n_threads = n_threads < 1 ? 0 : n_threads;
    struct pool *old = cur_pool();
    if (old != NULL && pool_n_threads(old) != threads_wanted()) {
        /* Called between forward passes only (contract), so no run is in flight; loaded models
         * pick the new pool up at their next pass. */
        struct pool *fresh = pool_create(threads_wanted());
        if (fresh != NULL) {
            atomic_store_explicit(&g_pool, fresh, memory_order_release);
            pool_destroy(old);
        }
    }
    pthread_mutex_unlock(&g_pool_mutex);
    /* The model's matmuls do not use OpenBLAS, but anyone else in the process (benchmarks) who
     * does should get the same thread count rather than oversubscribe. */
    openblas_set_num_threads(threads_wanted());
}

int model_finish_load(struct model *model, const char *dir, int32_t n_files, const char *dtype,
                      char *err, size_t err_size) {
    const struct model_config *cfg = &model->config;
    model->isa = kernel_isa_best();
    if (model->arch->prepare != NULL && model->arch->prepare(model, err, err_size) != 0) {
        return -1;
    }
    model->holds_pool = pool_acquire();
    if (!model->holds_pool) {
        snprintf(err, err_size, "cannot start the compute threads");
        return -1;
    }
    const char *act = cfg->activation == MODEL_ACT_SILU        ? "silu"
                      : cfg->activation == MODEL_ACT_GELU_TANH ? "gelu_new"
                                                               : "gelu";
    log_info("model %s: %s, %d layers, %d heads (%d KV, head %d), n_embd %d, n_inner %d, "
             "context %d, vocab %d, %s; %.2fM parameters (%s, %d file%s), %.1f MiB of weights "
             "(matmuls in %s); %s kernels, %d threads",
             dir, cfg->model_type, cfg->n_layer, cfg->n_head, cfg->n_kv_head, cfg->head_dim,
             cfg->n_embd, cfg->n_inner, cfg->n_ctx, cfg->n_vocab, act,
             (double)model->n_params / 1e6, dtype, n_files, n_files == 1 ? "" : "s",
             (double)model->weight_bytes / (1024.0 * 1024.0),
             model_weights_name(model_get_weights(model)), kernel_isa_name(model->isa),
             pool_n_threads(cur_pool()));
    if (model->ext.n_ctx_file > cfg->n_ctx) {
        log_info("model %s: serving %d positions, the sliding window (config.json says %d)", dir,
                 cfg->n_ctx, model->ext.n_ctx_file);
    }
    return 0;
}

void model_destroy(struct model *model) {
    if (model == NULL) {
        return;
    }
    if (model->holds_pool) {
        pool_release();
    }
    free(model->weights);
    free(model->layers);
    free(model->rope_cos);
    free(model->rope_sin);
    free(model);
}

const struct model_config *model_get_config(const struct model *model) {
    return &model->config;
}

size_t model_n_params(const struct model *model) {
    return model->n_params;
}

size_t model_weight_bytes(const struct model *model) {
    return model->weight_bytes;
}

enum model_weights model_get_weights(const struct model *model) {
    switch (model->wtype) {
    case KERNEL_W_F16:
        return MODEL_WEIGHTS_F16;
    case KERNEL_W_BF16:
        return MODEL_WEIGHTS_BF16;
    case KERNEL_W_Q8:
        return MODEL_WEIGHTS_Q8;
    case KERNEL_W_F32:
        break;
    }
    return MODEL_WEIGHTS_F32;
}

/* ---- scratch ---- */

static size_t round_up16(size_t n) {
    return (n + 15) / 16 * 16;
}

/* The widest input of any weight matmul: the residual stream, the attention output (q_dim) or
 * the MLP hidden. */
static int32_t max_matmul_k(const struct model_config *c) {
    int32_t k = c->n_embd > c->n_inner ? c->n_embd : c->n_inner;
    return k > c->n_head * c->head_dim ? k : c->n_head * c->head_dim;
}

struct model_scratch *model_scratch_create(const struct model *model, int32_t max_tokens,
                                           int32_t max_logits) {
    if (max_tokens < 1 || max_logits < 0 || max_logits > max_tokens) {
        return NULL;
    }
    const struct model_config *c = &model->config;
    size_t n = (size_t)max_tokens;
    size_t q_dim = (size_t)c->n_head * (size_t)c->head_dim;
    size_t kv_dim = (size_t)c->n_kv_head * (size_t)c->head_dim;
    size_t sizes[] = {
        n * (size_t)c->n_embd,
        n * (size_t)c->n_embd,
        n * (q_dim + 2 * kv_dim),
        n * q_dim,
        n * (size_t)c->n_inner,
        (size_t)(max_logits > 0 ? max_logits : 1) * c->n_embd,
        (size_t)POOL_MAX_THREADS * (size_t)c->n_ctx,
        n,
        model->wtype == KERNEL_W_Q8 ? n * kernel_q8_row_bytes(max_matmul_k(c)) / sizeof(float) : 0,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        total += round_up16(sizes[i]);
    }
    struct model_scratch *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->block = aligned_alloc(64, total * sizeof(float));
    if (s->block == NULL) {
        free(s);
        return NULL;
    }
    memset(s->block, 0, total * sizeof(float));
    float *p = s->block;
    float **dst[] = {&s->x, &s->h, &s->qkv, &s->att, &s->fc, &s->lnf, &s->scores};
    for (size_t i = 0; i < sizeof(dst) / sizeof(dst[0]); i++) {
        *dst[i] = p;
        p += round_up16(sizes[i]);
    }
    s->row0 = (int32_t *)p;
    p += round_up16(sizes[7]);
    s->x_q = model->wtype == KERNEL_W_Q8 ? p : NULL;
    s->max_tokens = max_tokens;
    s->max_logits = max_logits;
    s->n_ctx = c->n_ctx;
    return s;
}

void model_scratch_destroy(struct model_scratch *scratch) {
    if (scratch == NULL) {
        return;
    }
    free(scratch->block);
    free(scratch);
}

/* ---- forward helpers ---- */

static void matmul_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct fwd *f = ctx;
    int32_t n_panels = kernel_matmul_n_panels(f->mm_n, f->mm_epilogue);
    int32_t p0 = (int32_t)((int64_t)n_panels * i_task / f->mm_n_tasks);
    int32_t p1 = (int32_t)((int64_t)n_panels * (i_task + 1) / f->mm_n_tasks);
    if (f->model->wtype == KERNEL_W_Q8) {
        kernel_matmul_q8(f->model->isa, f->s->x_q, f->mm_w, f->mm_b, f->mm_out, f->mm_ldo, f->mm_m,
                         f->mm_k, f->mm_n, p0, p1, f->mm_epilogue);
        return;
    }
    kernel_matmul(f->model->isa, f->mm_x, (size_t)f->mm_k, f->mm_w, f->model->wtype, f->mm_b,
                  f->mm_out, f->mm_ldo, f->mm_m, f->mm_k, f->mm_n, p0, p1, f->mm_epilogue);
}

/* Q8: quantizes a share of the matmul's input rows. */
static void quantize_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct fwd *f = ctx;
    int32_t r0 = (int32_t)((int64_t)f->mm_m * i_task / f->mm_n_tasks);
    int32_t r1 = (int32_t)((int64_t)f->mm_m * (i_task + 1) / f->mm_n_tasks);
    size_t row_bytes = kernel_q8_row_bytes(f->mm_k);
    kernel_quantize_rows(f->model->isa, f->mm_x + (size_t)r0 * (size_t)f->mm_k, (size_t)f->mm_k,
                         r1 - r0, f->mm_k, (char *)f->s->x_q + (size_t)r0 * row_bytes);
}

void fwd_matmul(struct fwd *f, const float *x, const void *w, const float *b, float *out,
                size_t ldo, int32_t m, int32_t k, int32_t n, enum kernel_epilogue epilogue) {
    f->mm_x = x;
    f->mm_w = w;
    f->mm_b = b;
    f->mm_out = out;
    f->mm_ldo = ldo;
    f->mm_m = m;
    f->mm_k = k;
    f->mm_n = n;
    f->mm_epilogue = epilogue;
    int32_t n_threads = pool_n_threads(cur_pool());
    if (f->model->wtype == KERNEL_W_Q8) {
        /* Each row by itself (the batch stays bit-identical to its rows alone); a few rows are
         * not worth waking a thread. */
        f->mm_n_tasks = m < 16 ? 1 : (m < n_threads ? m : n_threads);
        if (f->mm_n_tasks == 1) {
            kernel_quantize_rows(f->model->isa, x, (size_t)k, m, k, f->s->x_q);
        } else {
            pool_run(cur_pool(), quantize_task, f, f->mm_n_tasks);
        }
    }
    int32_t n_panels = kernel_matmul_n_panels(n, epilogue);
    /* Small matmuls are not worth waking a thread; big ones get a few tasks per thread so a
     * core slowed by a neighbour does not hold the other back. */
    double flops = 2.0 * m * (double)k * n * (epilogue == KERNEL_EPILOGUE_SWIGLU ? 2 : 1);
    int32_t n_tasks = flops < 2e5 ? 1 : n_threads * 4;
    if (n_tasks > n_panels) {
        n_tasks = n_panels;
    }
    f->mm_n_tasks = n_tasks;
    pool_run(cur_pool(), matmul_task, f, n_tasks);
}

void norm_row(const float *x, float *y, const float *w, const float *b, int32_t c, float eps) {
    if (b == NULL) {
        /* RMSNorm: y = x / sqrt(mean(x^2) + eps) * w */
        float ss = 0.0f;
        for (int32_t i = 0; i < c; i++) {
            ss += x[i] * x[i];
        }
        float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        for (int32_t i = 0; i < c; i++) {
            y[i] = w[i] * (x[i] * rstd);
        }
        return;
    }
    float sum = 0.0f;
    for (int32_t i = 0; i < c; i++) {
        sum += x[i];
    }
    float mean = sum / (float)c;
    float var = 0.0f;
    for (int32_t i = 0; i < c; i++) {
        float d = x[i] - mean;
        var += d * d;
    }
    float rstd = 1.0f / sqrtf(var / (float)c + eps);
    for (int32_t i = 0; i < c; i++) {
        y[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

static void norm_task(void *ctx, int32_t i_task, int32_t i_thread) {
    (void)i_thread;
    struct fwd *f = ctx;
    int32_t c = f->model->config.n_embd;
    int32_t r0 = (int32_t)((int64_t)f->ln_rows * i_task / f->ln_n_tasks);
    int32_t r1 = (int32_t)((int64_t)f->ln_rows * (i_task + 1) / f->ln_n_tasks);
    for (int32_t r = r0; r < r1; r++) {
        norm_row(f->ln_in + (size_t)r * c, f->ln_out + (size_t)r * c, f->ln_w, f->ln_b, c,
                 f->model->config.layer_norm_eps);
    }
}

void fwd_norm(struct fwd *f, const float *in, float *out, const float *w, const float *b,
              int32_t rows) {
    f->ln_in = in;
    f->ln_out = out;
    f->ln_w = w;
    f->ln_b = b;
    f->ln_rows = rows;
    int32_t n_tasks =
        (size_t)rows * (size_t)f->model->config.n_embd < 32768 ? 1 : pool_n_threads(cur_pool());
    f->ln_n_tasks = n_tasks > rows ? rows : n_tasks;
    pool_run(cur_pool(), norm_task, f, f->ln_n_tasks);
}

void fwd_store_kv(struct fwd *f, int32_t qkv_width, int32_t k_col) {
    const struct model *model = f->model;
    struct kv_cache *kv = f->kv;
    int32_t kv_dim = kv->kv_dim;
    int32_t row = 0;
    for (int32_t i = 0; i < f->n_seqs; i++) {
        const struct model_batch_seq *b = &f->seqs[i];
        for (int32_t j = 0; j < b->n_tokens; j++, row++) {
            int32_t pos = b->kv->n_pos + j;
            const float *src = f->s->qkv + (size_t)row * (size_t)qkv_width + (size_t)k_col;
            for (int is_v = 0; is_v < 2; is_v++) {
                size_t at = kv_cache_row_index(kv, b->kv, f->layer, is_v, pos);
                const float *from = src + (size_t)is_v * (size_t)kv_dim;
                if (kv->etype == KERNEL_W_F16) {
                    kernel_f32_to_f16(model->isa, from, (uint16_t *)kv->data + at, (size_t)kv_dim);
                } else {
                    memcpy((float *)kv->data + at, from, (size_t)kv_dim * sizeof(float));
                }
            }
        }
    }
}

/* Attention of one (sequence, head): each new row attends causally to positions 0..its own. */
static void attention_task(void *ctx, int32_t i_task, int32_t i_thread) {
    struct fwd *f = ctx;
    const struct model_config *c = &f->model->config;
    int32_t i_seq = i_task / c->n_head;
    int32_t h = i_task % c->n_head;
    int32_t h_kv = h / (c->n_head / c->n_kv_head);
    const struct model_batch_seq *bs = &f->seqs[i_seq];
    int32_t hs = c->head_dim;
    int32_t q_dim = c->n_head * hs;
    int32_t qkv_width = f->qkv_width;
    float scale = c->is_scale_attn_weights ? 1.0f / sqrtf((float)hs) : 1.0f;
    float *scores = f->s->scores + (size_t)i_thread * (size_t)f->s->n_ctx;
    enum kernel_isa isa = f->model->isa;
    /* The KV head's K and V of position 0 of block 0; kernel_attention walks the block table. */
    size_t kv_dim = (size_t)f->kv->kv_dim;
    size_t esize = kernel_wtype_size(f->kv->etype);
    size_t layer_off = (size_t)f->layer * 2 * KV_BLOCK_SIZE * kv_dim + (size_t)h_kv * hs;
    const char *k_base = (const char *)f->kv->data + layer_off * esize;
    const char *v_base = k_base + (size_t)KV_BLOCK_SIZE * kv_dim * esize;
    for (int32_t i = 0; i < bs->n_tokens; i++) {
        int32_t row = f->s->row0[i_seq] + i;
        int32_t pos = bs->kv->n_pos + i;
        const float *q = f->s->qkv + (size_t)row * (size_t)qkv_width + (size_t)h * hs;
        float *out = f->s->att + (size_t)row * (size_t)q_dim + (size_t)h * hs;
        kernel_attention(isa, q, k_base, v_base, f->kv->etype, bs->kv->blocks, f->kv->block_elems,
                         kv_dim, pos + 1, hs, scale, scores, out);
    }
}

void fwd_attention(struct fwd *f, int32_t qkv_width) {
    f->qkv_width = qkv_width;
    pool_run(cur_pool(), attention_task, f, f->n_seqs * f->model->config.n_head);
}

/* Checks the batch against the scratch, the context and the reserved blocks. */
static int batch_is_valid(const struct model *model, const struct kv_cache *kv,
                          const struct model_scratch *s, const struct model_batch_seq *seqs,
                          int32_t n_seqs, int32_t *n_rows, int32_t *n_logits) {
    const struct model_config *c = &model->config;
    int64_t rows = 0;
    int64_t logits = 0;
    if (n_seqs < 0 || n_seqs > s->max_tokens) {
        return 0;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        const struct model_batch_seq *b = &seqs[i];
        if (b->kv == NULL || b->n_tokens < 0 || b->n_logits < 0 || b->n_logits > b->n_tokens ||
            (b->n_tokens > 0 && b->tokens == NULL)) {
            return 0;
        }
        if ((int64_t)b->kv->n_pos + b->n_tokens > c->n_ctx) {
            return 0;
        }
        if (b->n_tokens > 0) {
            int32_t first = b->kv->n_pos / KV_BLOCK_SIZE;
            int32_t last = (b->kv->n_pos + b->n_tokens - 1) / KV_BLOCK_SIZE;
            if (last >= b->kv->n_blocks) {
                return 0; /* not reserved */
            }
            for (int32_t j = first; j <= last; j++) {
                if (kv->refcount[b->kv->blocks[j]] != 1) {
                    return 0; /* shared: kv_seq_reserve would have copied it */
                }
            }
        }
        for (int32_t j = 0; j < b->n_tokens; j++) {
            if (b->tokens[j] < 0 || b->tokens[j] >= c->n_vocab) {
                return 0;
            }
        }
        /* A sequence twice in one batch would write the same positions twice. */
        for (int32_t j = 0; j < i; j++) {
            if (seqs[j].kv == b->kv) {
                return 0;
            }
        }
        rows += b->n_tokens;
        logits += b->n_logits;
    }
    if (rows > s->max_tokens || logits > s->max_logits) {
        return 0;
    }
    *n_rows = (int32_t)rows;
    *n_logits = (int32_t)logits;
    return 1;
}

int model_forward(struct model *model, struct kv_cache *kv, struct model_scratch *scratch,
                  const struct model_batch_seq *seqs, int32_t n_seqs, float *logits) {
    const struct model_config *c = &model->config;
    int32_t n_rows = 0;
    int32_t n_logits = 0;
    if (!batch_is_valid(model, kv, scratch, seqs, n_seqs, &n_rows, &n_logits)) {
        return -1;
    }
    if (n_rows == 0) {
        return 0;
    }
    struct fwd f = {
        .model = model, .kv = kv, .s = scratch, .seqs = seqs, .n_seqs = n_seqs, .n_rows = n_rows};
    int32_t C = c->n_embd;
    int32_t row = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        scratch->row0[i] = row;
        row += seqs[i].n_tokens;
    }
    model->arch->forward_blocks(&f);

    /* Final norm and the head only for the last n_logits rows of each sequence. */
    int32_t r = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t first = scratch->row0[i] + seqs[i].n_tokens - seqs[i].n_logits;
        for (int32_t j = 0; j < seqs[i].n_logits; j++, r++) {
            norm_row(scratch->x + (size_t)(first + j) * C, scratch->lnf + (size_t)r * C,
                     model->normf_w, model->normf_b, C, c->layer_norm_eps);
        }
    }
    if (n_logits > 0) {
        fwd_matmul(&f, scratch->lnf, model->lm_head, NULL, logits, (size_t)c->n_vocab, n_logits, C,
                   c->n_vocab, KERNEL_EPILOGUE_STORE);
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        seqs[i].kv->n_pos += seqs[i].n_tokens;
    }
    return 0;
}
