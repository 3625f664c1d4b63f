/*
 * arch_gpt2.c: GPT-2 (model_type gpt2): its tensors as transformers names them, and its blocks.
 *
 * x = wte[token] + wpe[pos]; per layer: h = LN1(x); qkv = h @ c_attn (Conv1D, q k v side by
 * side); causal attention; x += att @ c_proj; h = LN2(x); x += gelu(h @ c_fc) @ mlp.c_proj.
 * The final LayerNorm and the head (tied to wte unless config.json says otherwise) are
 * model.c's. Tensor names may carry "transformer." (as transformers writes them) or not (as the
 * hub's openai-community/gpt2 has them); older files also hold causal-mask buffers.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_internal.h"

/* Per layer, in allocation order; bind() relies on it. */
enum {
    G_LN1_W,
    G_LN1_B,
    G_QKV_W,
    G_QKV_B,
    G_O_W,
    G_O_B,
    G_LN2_W,
    G_LN2_B,
    G_FC_W,
    G_FC_B,
    G_PROJ_W,
    G_PROJ_B,
    G_PER_LAYER
};

static int gpt2_add_specs(const struct model_config_ext *ext, struct spec_list *list, char *err,
                          size_t err_size) {
    const struct model_config *cfg = &ext->config;
    int64_t C = cfg->n_embd;
    int64_t F = cfg->n_inner;
    int64_t V = cfg->n_vocab;
    /* wte is the head's only copy when tied (packed), else a plain lookup table. */
    int ok = spec_add(list, ext->config.is_tied ? SPEC_PACK_OUT_IN : SPEC_PLAIN, "wte.weight", V,
                      C) != NULL &&
             spec_add(list, SPEC_PLAIN, "wpe.weight", cfg->n_ctx, C) != NULL;
    for (int32_t l = 0; l < cfg->n_layer && ok; l++) {
        const struct {
            const char *suffix;
            int64_t d0, d1;
            enum spec_layout layout;
        } per_layer[G_PER_LAYER] = {
            {"ln_1.weight", C, 0, SPEC_PLAIN},
            {"ln_1.bias", C, 0, SPEC_PLAIN},
            {"attn.c_attn.weight", C, 3 * C, SPEC_PACK_IN_OUT},
            {"attn.c_attn.bias", 3 * C, 0, SPEC_PLAIN},
            {"attn.c_proj.weight", C, C, SPEC_PACK_IN_OUT},
            {"attn.c_proj.bias", C, 0, SPEC_PLAIN},
            {"ln_2.weight", C, 0, SPEC_PLAIN},
            {"ln_2.bias", C, 0, SPEC_PLAIN},
            {"mlp.c_fc.weight", C, F, SPEC_PACK_IN_OUT},
            {"mlp.c_fc.bias", F, 0, SPEC_PLAIN},
            {"mlp.c_proj.weight", F, C, SPEC_PACK_IN_OUT},
            {"mlp.c_proj.bias", C, 0, SPEC_PLAIN},
        };
        for (size_t i = 0; i < G_PER_LAYER && ok; i++) {
            char name[96];
            snprintf(name, sizeof(name), "h.%d.%s", l, per_layer[i].suffix);
            ok =
                spec_add(list, per_layer[i].layout, name, per_layer[i].d0, per_layer[i].d1) != NULL;
        }
    }
    ok = ok && spec_add(list, SPEC_PLAIN, "ln_f.weight", C, 0) != NULL &&
         spec_add(list, SPEC_PLAIN, "ln_f.bias", C, 0) != NULL &&
         /* Tied: a file may still carry lm_head.weight (a copy of wte); accept and ignore it. */
         spec_add(list, ext->config.is_tied ? SPEC_IGNORED : SPEC_PACK_OUT_IN, "lm_head.weight", V,
                  C) != NULL;
    if (!ok) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s);
    size_t m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static const char *gpt2_binding_name(const char *name) {
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")) {
        return NULL; /* causal-mask buffers of older files: not parameters */
    }
    const char *prefix = "transformer.";
    size_t n = strlen(prefix);
    return strncmp(name, prefix, n) == 0 ? name + n : name;
}

static void gpt2_bind(struct model *m, const struct spec *specs, const unsigned char *w) {
#define AT(i) ((const void *)(w + specs[(i)].offset))
    int32_t L = m->config.n_layer;
    int32_t last = 2 + G_PER_LAYER * L;
    m->wte = m->config.is_tied ? NULL : AT(0);
    m->lm_head = AT(m->config.is_tied ? 0 : last + 2);
    m->wpe = AT(1);
    for (int32_t l = 0; l < L; l++) {
        int32_t b = 2 + G_PER_LAYER * l;
        struct layer_weights *lw = &m->layers[l];
        lw->norm1_w = AT(b + G_LN1_W);
        lw->norm1_b = AT(b + G_LN1_B);
        lw->w_qkv = AT(b + G_QKV_W);
        lw->b_qkv = AT(b + G_QKV_B);
        lw->w_o = AT(b + G_O_W);
        lw->b_o = AT(b + G_O_B);
        lw->norm2_w = AT(b + G_LN2_W);
        lw->norm2_b = AT(b + G_LN2_B);
        lw->w_up = AT(b + G_FC_W);
        lw->b_up = AT(b + G_FC_B);
        lw->w_down = AT(b + G_PROJ_W);
        lw->b_down = AT(b + G_PROJ_B);
    }
    m->normf_w = AT(last);
    m->normf_b = AT(last + 1);
#undef AT
}

static void gelu_exact(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
    }
}

static void gpt2_forward_blocks(struct fwd *f) {
    const struct model *model = f->model;
    const struct model_config *c = &model->config;
    struct model_scratch *s = f->s;
    int32_t C = c->n_embd;
    int32_t F = c->n_inner;
    int32_t N = f->n_rows;

    /* Embeddings: x[row] = wte[token] + wpe[pos]. */
    int32_t row = 0;
    for (int32_t i = 0; i < f->n_seqs; i++) {
        for (int32_t j = 0; j < f->seqs[i].n_tokens; j++, row++) {
            int32_t tok = f->seqs[i].tokens[j];
            const float *pe = model->wpe + (size_t)(f->seqs[i].kv->n_pos + j) * C;
            float *x = s->x + (size_t)row * C;
            for (int32_t e = 0; e < C; e++) {
                x[e] = model_embedding(model, tok, e) + pe[e];
            }
        }
    }

    for (int32_t l = 0; l < c->n_layer; l++) {
        const struct layer_weights *w = &model->layers[l];
        f->layer = l;
        fwd_norm(f, s->x, s->h, w->norm1_w, w->norm1_b, N);
        fwd_matmul(f, s->h, w->w_qkv, w->b_qkv, s->qkv, (size_t)3 * C, N, C, 3 * C,
                   KERNEL_EPILOGUE_STORE);
        fwd_store_kv(f, 3 * C, C);
        fwd_attention(f, 3 * C);
        fwd_matmul(f, s->att, w->w_o, w->b_o, s->x, (size_t)C, N, C, C, KERNEL_EPILOGUE_ADD);
        fwd_norm(f, s->x, s->h, w->norm2_w, w->norm2_b, N);
        if (c->activation == MODEL_ACT_GELU_TANH) {
            fwd_matmul(f, s->h, w->w_up, w->b_up, s->fc, (size_t)F, N, C, F,
                       KERNEL_EPILOGUE_GELU_TANH);
        } else {
            fwd_matmul(f, s->h, w->w_up, w->b_up, s->fc, (size_t)F, N, C, F, KERNEL_EPILOGUE_STORE);
            gelu_exact(s->fc, (size_t)N * F);
        }
        fwd_matmul(f, s->fc, w->w_down, w->b_down, s->x, (size_t)C, N, F, C, KERNEL_EPILOGUE_ADD);
    }
}

const struct arch_ops arch_gpt2 = {
    .name = "GPT-2",
    .add_specs = gpt2_add_specs,
    .binding_name = gpt2_binding_name,
    .bind = gpt2_bind,
    .prepare = NULL,
    .forward_blocks = gpt2_forward_blocks,
};
