/*
 * model_internal.h: what the generic loader (loader.c), the shared forward-pass helpers
 * (model.c) and the architecture files (arch_gpt2.c, arch_llama.c) share. Private to src/model.
 *
 * An architecture is one struct arch_ops: it lists the tensors its checkpoints hold as weight
 * specs (name, shape, how they are laid out in memory), points the model's weights at them once
 * they are loaded, and writes its forward pass from the helpers below. Adding an architecture
 * means one new arch_*.c file and an entry in arch_for(); the engine and server never see it.
 */
#ifndef GPTD_MODEL_INTERNAL_H
#define GPTD_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gptd/model.h>

#include "config.h"
#include "kernels.h"
#include "kv_cache_internal.h"
#include "safetensors.h"

/* ---- weight specs (loader.c) ---------------------------------------------------------- */

enum spec_layout {
    SPEC_PLAIN = 0,    /* float32, the parts' elements one after another */
    SPEC_PACK_IN_OUT,  /* one Conv1D weight (K, N) -> packed (K, N) */
    SPEC_PACK_OUT_IN,  /* Linear weights (N_i, K), side by side -> packed (K, sum N_i) */
    SPEC_PACK_SWIGLU,  /* gate (F, K) and up (F, K) -> packed for KERNEL_EPILOGUE_SWIGLU */
    SPEC_PLAIN_SWIGLU, /* gate bias (F,) and up bias (F,) in the SWIGLU column order */
    SPEC_IGNORED,      /* accepted in a file (e.g. a tied lm_head copy) and not stored */
};

#define SPEC_MAX_PARTS 3

struct spec_part {
    char name[96]; /* as in the checkpoint, after the architecture's prefix handling */
    int32_t n_dims;
    int64_t shape[2];
    const struct st_tensor *tensor; /* bound while loading */
    const char *file;               /* the file it was found in */
};

struct spec {
    enum spec_layout layout;
    int32_t n_parts;
    struct spec_part part[SPEC_MAX_PARTS];
    int32_t k, n;      /* packed: K rows and N logical columns (SWIGLU: F output columns) */
    size_t n_elements; /* in the allocation (packed ones include the padding) */
    size_t offset;     /* bytes into model->weights */
};

struct spec_list {
    struct spec *specs;
    int32_t n, cap;
};

/* Appends a spec of one part (d1 = 0 for a vector). NULL when out of memory. */
struct spec *spec_add(struct spec_list *list, enum spec_layout layout, const char *name, int64_t d0,
                      int64_t d1);
/* Adds a part to spec (Linear weights or biases laid side by side). */
void spec_add_part(struct spec *s, const char *name, int64_t d0, int64_t d1);

/* ---- the model ---------------------------------------------------------------------- */

/* One layer's weights; which are set depends on the architecture. Packed matrices are (in, out)
 * in KERNEL_NR-column panels of model->wtype; vectors are float32. */
struct layer_weights {
    const float *norm1_w, *norm1_b; /* before attention (b: LayerNorm only) */
    const void *w_qkv;              /* packed (C, q_dim + 2 kv_dim): q, k, v side by side */
    const float *b_qkv;             /* (q_dim + 2 kv_dim,) or NULL */
    const void *w_o;                /* packed (q_dim, C) */
    const float *b_o;               /* (C,) or NULL */
    const float *norm2_w, *norm2_b; /* before the MLP */
    const void *w_up;               /* packed (C, F), or (C, 2F) SWIGLU-packed gate and up */
    const float *b_up;              /* or NULL */
    const void *w_down;             /* packed (F, C) */
    const float *b_down;            /* or NULL */
};

struct arch_ops;

struct model {
    struct model_config config;
    struct model_config_ext ext;
    const struct arch_ops *arch;
    void *weights; /* the one allocation every weight pointer below points into */
    size_t weight_bytes;
    enum kernel_wtype wtype; /* of every packed weight */
    size_t n_params;
    const float *wte;     /* (V, C) token embeddings when the head is untied; NULL when tied */
    const float *wpe;     /* GPT-2: (n_ctx, C) learned positions */
    const void *lm_head;  /* packed (C, V): the output head, or the embeddings when tied */
    const float *normf_w; /* final norm */
    const float *normf_b; /* (LayerNorm only) */
    struct layer_weights *layers; /* (L,) */
    float *rope_cos;              /* Llama: (n_ctx, HS / 2) cos and sin of position x freq */
    float *rope_sin;
    enum kernel_isa isa;
    bool holds_pool; /* counted in the process-wide pool's users (model.c) */
};

/* The end of model_load_with (loader.c calls it; model.c has it): the architecture's tables,
 * the kernel ISA, the process-wide pool, the start-up log line. 0, or -1 + err. */
int model_finish_load(struct model *model, const char *dir, int32_t n_files, const char *dtype,
                      char *err, size_t err_size);

/* ---- forward-pass state and helpers (model.c) ------------------------------------------ */

struct model_scratch {
    int32_t max_tokens;
    int32_t max_logits;
    int32_t n_ctx;
    float *x;      /* (N, C) residual stream */
    float *h;      /* (N, C) normed input of a block */
    float *qkv;    /* (N, q_dim + 2 kv_dim) */
    float *att;    /* (N, q_dim) attention output, heads side by side */
    float *fc;     /* (N, F) MLP hidden */
    float *lnf;    /* (R, C) final norm of the logit rows */
    float *scores; /* (POOL_MAX_THREADS, n_ctx) attention weights, one row per thread */
    int32_t *row0; /* (N,) first row of each sequence in the batch */
    void *x_q;     /* Q8 weights: (N, kernel_q8_row_bytes(K)) a matmul's input rows, quantized */
    void *block;   /* the one allocation */
};

/* One forward call. The pool's tasks read it; helpers fill in the per-call fields. */
struct fwd {
    const struct model *model;
    struct kv_cache *kv;
    struct model_scratch *s;
    const struct model_batch_seq *seqs;
    int32_t n_seqs;
    int32_t n_rows;
    int32_t layer;
    int32_t qkv_width; /* columns of s->qkv: q_dim + 2 kv_dim (attention reads it) */
    /* the matmul being split across the pool */
    const float *mm_x;
    const void *mm_w;
    const float *mm_b;
    float *mm_out;
    size_t mm_ldo;
    int32_t mm_m, mm_k, mm_n, mm_n_tasks;
    enum kernel_epilogue mm_epilogue;
    /* the norm being split across the pool */
    const float *ln_in;
    float *ln_out;
    const float *ln_w;
    const float *ln_b; /* NULL: RMSNorm */
    int32_t ln_rows, ln_n_tasks;
};

/* out (m, n) [epilogue] x (m, k) @ W + b over the pool, split by column panels. For
 * KERNEL_EPILOGUE_SWIGLU, n is the output width F. */
void fwd_matmul(struct fwd *f, const float *x, const void *w, const float *b, float *out,
                size_t ldo, int32_t m, int32_t k, int32_t n, enum kernel_epilogue epilogue);
/* LayerNorm (b != NULL) or RMSNorm (b == NULL) of rows (C,) over the pool. */
void fwd_norm(struct fwd *f, const float *in, float *out, const float *w, const float *b,
              int32_t rows);
/* One row of the same norms, on the calling thread. */
void norm_row(const float *x, float *y, const float *w, const float *b, int32_t c, float eps);
/* Writes every new row's K and V of this layer (in qkv at columns [k_col, k_col + kv_dim) and
 * [k_col + kv_dim, ...)) into its sequence's blocks. */
void fwd_store_kv(struct fwd *f, int32_t qkv_width, int32_t k_col);
/* Attention of every (sequence, head) over the pool: q from qkv (width qkv_width), K/V from the
 * cache (query head h reads KV head h / (n_head / n_kv_head)), output into s->att. */
void fwd_attention(struct fwd *f, int32_t qkv_width);
/* The token embedding of tok, column e: from wte, or from the packed head when tied. */
static inline float model_embedding(const struct model *m, int32_t tok, int32_t e) {
    int32_t c = m->config.n_embd;
    return m->wte != NULL
               ? m->wte[(size_t)tok * c + e]
               : kernel_packed_get(m->wtype, m->lm_head, c, kernel_packed_index(c, e, tok));
}

/* ---- architectures ------------------------------------------------------------------- */

struct arch_ops {
    const char *name;
    /* Lists the checkpoint's tensors (as named in it) in allocation order. 0 or -1 + err. */
    int (*add_specs)(const struct model_config_ext *ext, struct spec_list *list, char *err,
                     size_t err_size);
    /* The name a tensor is bound by (e.g. GPT-2's optional "transformer." prefix dropped), or
     * NULL for buffers that are not parameters (causal masks, rotary inv_freq). */
    const char *(*binding_name)(const char *name);
    /* Points the model's weights into the allocation w, in add_specs' order. */
    void (*bind)(struct model *m, const struct spec *specs, const unsigned char *w);
    /* Anything else computed once at load (RoPE tables). 0, or -1 + err. */
    int (*prepare)(struct model *m, char *err, size_t err_size);
    /* The transformer blocks: from token ids to the residual stream s->x before the final
     * norm, for every row of the batch. */
    void (*forward_blocks)(struct fwd *f);
};

extern const struct arch_ops arch_gpt2;
extern const struct arch_ops arch_llama;

#endif
