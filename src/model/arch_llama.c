/*
 * arch_llama.c: the Llama family (model_type llama, mistral, qwen2): its tensors as transformers
 * names them, the rotary tables, and its blocks.
 *
 * x = embed_tokens[token]; per layer: h = RMSNorm1(x); q, k, v = h @ (q|k|v)_proj (+ biases
 * for Qwen2 or attention_bias); rotate q and k by position (RoPE, rotate-half order: the first
 * half of a head pairs with the second, which is how transformers lays out q/k rows); causal
 * attention where query head h reads KV head h / (n_head / n_kv_head) (grouped-query); x +=
 * att @ o_proj; h = RMSNorm2(x); x += (silu(h @ gate) * (h @ up)) @ down. The final RMSNorm and
 * the head (lm_head, or embed_tokens when tied) are model.c's.
 *
 * q, k and v are one packed matrix (one matmul), gate and up another, packed so that the
 * kernel's SWIGLU epilogue computes silu(gate) * up as it stores (kernels.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* The specs of one layer, in allocation order (optional ones only when the config has them). */
static int llama_add_specs(const struct model_config_ext *ext, struct spec_list *list, char *err,
                           size_t err_size) {
    const struct model_config *cfg = &ext->config;
    int64_t C = cfg->n_embd;
    int64_t F = cfg->n_inner;
    int64_t V = cfg->n_vocab;
    int64_t q_dim = (int64_t)cfg->n_head * cfg->head_dim;
    int64_t kv_dim = (int64_t)cfg->n_kv_head * cfg->head_dim;
    char name[96];
    int ok = spec_add(list, ext->config.is_tied ? SPEC_PACK_OUT_IN : SPEC_PLAIN,
                      "model.embed_tokens.weight", V, C) != NULL;
    for (int32_t l = 0; l < cfg->n_layer && ok; l++) {
        char p[48];
        snprintf(p, sizeof(p), "model.layers.%d", l);
        struct spec *s;
#define NAME(fmt) (snprintf(name, sizeof(name), fmt, p), name)
        ok = spec_add(list, SPEC_PLAIN, NAME("%s.input_layernorm.weight"), C, 0) != NULL;
        s = ok ? spec_add(list, SPEC_PACK_OUT_IN, NAME("%s.self_attn.q_proj.weight"), q_dim, C)
               : NULL;
        if (s != NULL) {
            spec_add_part(s, NAME("%s.self_attn.k_proj.weight"), kv_dim, C);
            spec_add_part(s, NAME("%s.self_attn.v_proj.weight"), kv_dim, C);
        }
        ok = s != NULL;
        if (ok && ext->has_qkv_bias) {
            s = spec_add(list, SPEC_PLAIN, NAME("%s.self_attn.q_proj.bias"), q_dim, 0);
            if (s != NULL) {
                spec_add_part(s, NAME("%s.self_attn.k_proj.bias"), kv_dim, 0);
                spec_add_part(s, NAME("%s.self_attn.v_proj.bias"), kv_dim, 0);
            }
            ok = s != NULL;
        }
        ok = ok && spec_add(list, SPEC_PACK_OUT_IN, NAME("%s.self_attn.o_proj.weight"), C, q_dim);
        if (ok && ext->has_o_bias) {
            ok = spec_add(list, SPEC_PLAIN, NAME("%s.self_attn.o_proj.bias"), C, 0) != NULL;
        }
        ok = ok &&
             spec_add(list, SPEC_PLAIN, NAME("%s.post_attention_layernorm.weight"), C, 0) != NULL;
        s = ok ? spec_add(list, SPEC_PACK_SWIGLU, NAME("%s.mlp.gate_proj.weight"), F, C) : NULL;
        if (s != NULL) {
            spec_add_part(s, NAME("%s.mlp.up_proj.weight"), F, C);
        }
        ok = s != NULL;
        if (ok && ext->has_mlp_bias) {
            s = spec_add(list, SPEC_PLAIN_SWIGLU, NAME("%s.mlp.gate_proj.bias"), F, 0);
            if (s != NULL) {
                spec_add_part(s, NAME("%s.mlp.up_proj.bias"), F, 0);
            }
            ok = s != NULL;
        }
        ok = ok && spec_add(list, SPEC_PACK_OUT_IN, NAME("%s.mlp.down_proj.weight"), C, F);
        if (ok && ext->has_mlp_bias) {
            ok = spec_add(list, SPEC_PLAIN, NAME("%s.mlp.down_proj.bias"), C, 0) != NULL;
        }
#undef NAME
    }
    ok = ok && spec_add(list, SPEC_PLAIN, "model.norm.weight", C, 0) != NULL &&
         /* Tied: a file may still carry lm_head.weight (a copy); accept and ignore it. */
         spec_add(list, ext->config.is_tied ? SPEC_IGNORED : SPEC_PACK_OUT_IN, "lm_head.weight", V,
                  C) != NULL;
    if (!ok) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    return 0;
}

static const char *llama_binding_name(const char *name) {
    const char *buffer = "rotary_emb.inv_freq";
    size_t n = strlen(name);
    size_t m = strlen(buffer);
    if (n >= m && strcmp(name + n - m, buffer) == 0) {
        return NULL; /* a buffer some older checkpoints carry, recomputed here */
    }
    return name;
}

static void llama_bind(struct model *m, const struct spec *specs, const unsigned char *w) {
    const struct model_config_ext *ext = &m->ext;
    int32_t i = 0;
#define NEXT() ((const void *)(w + specs[i++].offset))
    const void *embed = NEXT();
    m->wte = ext->config.is_tied ? NULL : embed;
    for (int32_t l = 0; l < m->config.n_layer; l++) {
        struct layer_weights *lw = &m->layers[l];
        lw->norm1_w = NEXT();
        lw->w_qkv = NEXT();
        lw->b_qkv = ext->has_qkv_bias ? NEXT() : NULL;
        lw->w_o = NEXT();
        lw->b_o = ext->has_o_bias ? NEXT() : NULL;
        lw->norm2_w = NEXT();
        lw->w_up = NEXT();
        lw->b_up = ext->has_mlp_bias ? NEXT() : NULL;
        lw->w_down = NEXT();
        lw->b_down = ext->has_mlp_bias ? NEXT() : NULL;
    }
    m->normf_w = NEXT();
    m->normf_b = NULL; /* RMSNorm */
    const void *head = NEXT();
    m->lm_head = ext->config.is_tied ? embed : head;
#undef NEXT
}

/* The inverse frequencies of the rotary embedding with the config's scaling, as transformers
 * computes them (float32). */
static void rope_inv_freq(const struct model_config_ext *ext, float *inv, int32_t half) {
    const struct model_config *c = &ext->config;
    int32_t hs = c->head_dim;
    for (int32_t i = 0; i < half; i++) {
        inv[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hs);
    }
    if (ext->rope_scaling == ROPE_SCALING_LINEAR) {
        for (int32_t i = 0; i < half; i++) {
            inv[i] /= ext->rope_factor;
        }
    } else if (ext->rope_scaling == ROPE_SCALING_LLAMA3) {
        /* Llama 3.1: long wavelengths are slowed by factor, short ones kept, and the band in
         * between blended smoothly. */
        float old_ctx = (float)ext->rope_original_ctx;
        float low_wavelen = old_ctx / ext->rope_low_freq_factor;
        float high_wavelen = old_ctx / ext->rope_high_freq_factor;
        for (int32_t i = 0; i < half; i++) {
            float wavelen = 2.0f * 3.14159265358979323846f / inv[i];
            float f = wavelen > low_wavelen ? inv[i] / ext->rope_factor : inv[i];
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (old_ctx / wavelen - ext->rope_low_freq_factor) /
                               (ext->rope_high_freq_factor - ext->rope_low_freq_factor);
                f = (1.0f - smooth) * f / ext->rope_factor + smooth * f;
            }
            inv[i] = f;
        }
    }
}

static int llama_prepare(struct model *m, char *err, size_t err_size) {
    int32_t half = m->config.head_dim / 2;
    size_t n = (size_t)m->config.n_ctx * (size_t)half;
    float *inv = malloc((size_t)half * sizeof(float));
    m->rope_cos = malloc(n * sizeof(float));
    m->rope_sin = malloc(n * sizeof(float));
    if (inv == NULL || m->rope_cos == NULL || m->rope_sin == NULL) {
        free(inv);
        snprintf(err, err_size, "out of memory for the rotary tables (%zu floats)", 2 * n);
        return -1;
    }
    rope_inv_freq(&m->ext, inv, half);
    for (int32_t pos = 0; pos < m->config.n_ctx; pos++) {
        for (int32_t i = 0; i < half; i++) {
            float angle = (float)pos * inv[i];
            m->rope_cos[(size_t)pos * half + i] = cosf(angle);
            m->rope_sin[(size_t)pos * half + i] = sinf(angle);
        }
    }
    free(inv);
    return 0;
}

/* Rotates n_heads heads of size hs starting at v by position pos: in each head, element i
 * pairs with i + hs / 2 (rotate-half). */
static void rope_heads(float *v, int32_t n_heads, int32_t hs, const float *cos_pos,
                       const float *sin_pos) {
    int32_t half = hs / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * hs;
        for (int32_t i = 0; i < half; i++) {
            float a = x[i];
            float b = x[i + half];
            x[i] = a * cos_pos[i] - b * sin_pos[i];
            x[i + half] = b * cos_pos[i] + a * sin_pos[i];
        }
    }
}

static void llama_forward_blocks(struct fwd *f) {
    const struct model *model = f->model;
    const struct model_config *c = &model->config;
    struct model_scratch *s = f->s;
    int32_t C = c->n_embd;
    int32_t F = c->n_inner;
    int32_t N = f->n_rows;
    int32_t hs = c->head_dim;
    int32_t half = hs / 2;
    int32_t q_dim = c->n_head * hs;
    int32_t kv_dim = c->n_kv_head * hs;
    int32_t qkv_width = q_dim + 2 * kv_dim;

    int32_t row = 0;
    for (int32_t i = 0; i < f->n_seqs; i++) {
        for (int32_t j = 0; j < f->seqs[i].n_tokens; j++, row++) {
            int32_t tok = f->seqs[i].tokens[j];
            float *x = s->x + (size_t)row * C;
            for (int32_t e = 0; e < C; e++) {
                x[e] = model_embedding(model, tok, e);
            }
        }
    }

    for (int32_t l = 0; l < c->n_layer; l++) {
        const struct layer_weights *w = &model->layers[l];
        f->layer = l;
        fwd_norm(f, s->x, s->h, w->norm1_w, NULL, N);
        fwd_matmul(f, s->h, w->w_qkv, w->b_qkv, s->qkv, (size_t)qkv_width, N, C, qkv_width,
                   KERNEL_EPILOGUE_STORE);
        row = 0;
        for (int32_t i = 0; i < f->n_seqs; i++) {
            for (int32_t j = 0; j < f->seqs[i].n_tokens; j++, row++) {
                size_t pos = (size_t)(f->seqs[i].kv->n_pos + j);
                const float *cs = model->rope_cos + pos * (size_t)half;
                const float *sn = model->rope_sin + pos * (size_t)half;
                float *q = s->qkv + (size_t)row * (size_t)qkv_width;
                rope_heads(q, c->n_head, hs, cs, sn);
                rope_heads(q + q_dim, c->n_kv_head, hs, cs, sn);
            }
        }
        fwd_store_kv(f, qkv_width, q_dim);
        fwd_attention(f, qkv_width);
        fwd_matmul(f, s->att, w->w_o, w->b_o, s->x, (size_t)C, N, q_dim, C, KERNEL_EPILOGUE_ADD);
        fwd_norm(f, s->x, s->h, w->norm2_w, NULL, N);
        fwd_matmul(f, s->h, w->w_up, w->b_up, s->fc, (size_t)F, N, C, F, KERNEL_EPILOGUE_SWIGLU);
        fwd_matmul(f, s->fc, w->w_down, w->b_down, s->x, (size_t)C, N, F, C, KERNEL_EPILOGUE_ADD);
    }
}

const struct arch_ops arch_llama = {
    .name = "Llama",
    .add_specs = llama_add_specs,
    .binding_name = llama_binding_name,
    .bind = llama_bind,
    .prepare = llama_prepare,
    .forward_blocks = llama_forward_blocks,
};
