/*
 * kv_cache.c: the paged KV cache (see model.h): one allocation of fixed-size blocks made at
 * start-up for a byte budget, a free stack, per-block reference counts, and per-sequence block
 * tables. Sequences of one group share blocks by reference (kv_seq_fork); a block about to be
 * written while shared is copied first (kv_seq_reserve), so forks never see each other's
 * tokens. Elements are float32 or (opt-in) IEEE half. Engine thread only: no locks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/model.h>

#include "kv_cache_internal.h"

const char *kv_dtype_name(enum kv_dtype dtype) {
    return dtype == KV_DTYPE_F16 ? "f16" : "f32";
}

int kv_dtype_parse(const char *text, enum kv_dtype *out) {
    if (strcmp(text, "f32") == 0) {
        *out = KV_DTYPE_F32;
    } else if (strcmp(text, "f16") == 0) {
        *out = KV_DTYPE_F16;
    } else {
        return -1;
    }
    return 0;
}

struct kv_cache *kv_cache_create(const struct model *model, size_t budget_bytes, char *err,
                                 size_t err_size) {
    return kv_cache_create_with(model, budget_bytes, KV_DTYPE_F32, err, err_size);
}

struct kv_cache *kv_cache_create_with(const struct model *model, size_t budget_bytes,
                                      enum kv_dtype dtype, char *err, size_t err_size) {
    const struct model_config *cfg = model_get_config(model);
    enum kernel_wtype etype = dtype == KV_DTYPE_F16 ? KERNEL_W_F16 : KERNEL_W_F32;
    /* Attention widens an f16 row on the stack (kernels.h). */
    if (etype == KERNEL_W_F16 && cfg->head_dim > KERNEL_ATTENTION_MAX_HS) {
        snprintf(err, err_size, "an f16 KV cache supports head sizes up to %d (this model: %d)",
                 KERNEL_ATTENTION_MAX_HS, cfg->head_dim);
        return NULL;
    }
    /* Sized by KV heads x head size: grouped-query attention stores n_head / n_kv_head times
     * fewer bytes per position than the query heads would need. */
    int32_t kv_dim = cfg->n_kv_head * cfg->head_dim;
    size_t block_elems = (size_t)cfg->n_layer * 2 * KV_BLOCK_SIZE * (size_t)kv_dim;
    size_t block_bytes = block_elems * kernel_wtype_size(etype);
    size_t n_blocks = budget_bytes / block_bytes;
    if (n_blocks == 0) {
        snprintf(err, err_size, "KV cache budget of %zu bytes is less than one block (%zu bytes)",
                 budget_bytes, block_bytes);
        return NULL;
    }
    if (n_blocks > INT32_MAX / 2) {
        n_blocks = INT32_MAX / 2;
    }
    struct kv_cache *kv = calloc(1, sizeof(*kv));
    if (kv == NULL) {
        goto oom;
    }
    kv->n_blocks = (int32_t)n_blocks;
    kv->n_layer = cfg->n_layer;
    kv->kv_dim = kv_dim;
    kv->n_ctx = cfg->n_ctx;
    kv->block_elems = block_elems;
    kv->etype = etype;
    /* 64-byte aligned for vector loads (aligned_alloc wants a multiple of 64 bytes). */
    size_t data_bytes = (n_blocks * block_bytes + 63) / 64 * 64;
    kv->data = aligned_alloc(64, data_bytes);
    kv->refcount = calloc(n_blocks, sizeof(*kv->refcount));
    kv->free_ids = malloc(n_blocks * sizeof(*kv->free_ids));
    if (kv->data == NULL || kv->refcount == NULL || kv->free_ids == NULL) {
        goto oom;
    }
    /* Touch every page now: the budget is committed at start-up (a server that cannot have it
     * should fail here, not mid-request), and no decode step pays first-touch page faults. */
    memset(kv->data, 0, data_bytes);
    /* Pop order low ids first: ids are handed out from the top of the stack. */
    for (int32_t i = 0; i < kv->n_blocks; i++) {
        kv->free_ids[i] = kv->n_blocks - 1 - i;
    }
    kv->n_free = kv->n_blocks;
    return kv;
oom:
    snprintf(err, err_size, "out of memory allocating a %zu-byte KV cache", budget_bytes);
    kv_cache_destroy(kv);
    return NULL;
}

void kv_cache_destroy(struct kv_cache *kv) {
    if (kv == NULL) {
        return;
    }
    free(kv->data);
    free(kv->refcount);
    free(kv->free_ids);
    free(kv);
}

int32_t kv_cache_n_blocks_total(const struct kv_cache *kv) {
    return kv->n_blocks;
}

int32_t kv_cache_n_blocks_free(const struct kv_cache *kv) {
    return kv->n_free;
}

size_t kv_cache_bytes_per_block(const struct kv_cache *kv) {
    return kv->block_elems * kernel_wtype_size(kv->etype);
}

enum kv_dtype kv_cache_dtype(const struct kv_cache *kv) {
    return kv->etype == KERNEL_W_F16 ? KV_DTYPE_F16 : KV_DTYPE_F32;
}

static int32_t block_pop(struct kv_cache *kv) {
    int32_t id = kv->free_ids[--kv->n_free];
    kv->refcount[id] = 1;
    return id;
}

static void block_release(struct kv_cache *kv, int32_t id) {
    if (--kv->refcount[id] == 0) {
        kv->free_ids[kv->n_free++] = id;
    }
}

int kv_seq_init(struct kv_seq *seq, const struct kv_cache *kv) {
    int32_t max_blocks = (kv->n_ctx + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    seq->blocks = calloc((size_t)max_blocks, sizeof(*seq->blocks));
    seq->n_blocks = 0;
    seq->n_pos = 0;
    seq->max_blocks = seq->blocks != NULL ? max_blocks : 0;
    return seq->blocks != NULL ? 0 : -1;
}

void kv_seq_finish(struct kv_cache *kv, struct kv_seq *seq) {
    if (seq->blocks != NULL) {
        for (int32_t i = 0; i < seq->n_blocks; i++) {
            block_release(kv, seq->blocks[i]);
        }
        free(seq->blocks);
    }
    memset(seq, 0, sizeof(*seq));
}

enum kv_status kv_seq_reserve(struct kv_cache *kv, struct kv_seq *seq, int32_t n_new) {
    if (n_new <= 0) {
        return KV_OK;
    }
    if (n_new > kv->n_ctx - seq->n_pos) {
        return KV_ERR_TOO_LONG;
    }
    int32_t first = seq->n_pos / KV_BLOCK_SIZE;
    int32_t last = (seq->n_pos + n_new - 1) / KV_BLOCK_SIZE;
    /* Count first, so that a failure changes nothing. */
    int32_t n_needed = 0;
    for (int32_t i = first; i <= last; i++) {
        if (i >= seq->n_blocks || kv->refcount[seq->blocks[i]] > 1) {
            n_needed++;
        }
    }
    if (n_needed > kv->n_free) {
        return KV_ERR_NO_BLOCKS;
    }
    for (int32_t i = first; i <= last; i++) {
        if (i >= seq->n_blocks) {
            seq->blocks[seq->n_blocks++] = block_pop(kv);
        } else if (kv->refcount[seq->blocks[i]] > 1) {
            /* Copy-on-write: the other holders keep the original. */
            int32_t old = seq->blocks[i];
            int32_t fresh = block_pop(kv);
            size_t block_bytes = kv_cache_bytes_per_block(kv);
            memcpy((char *)kv->data + (size_t)fresh * block_bytes,
                   (const char *)kv->data + (size_t)old * block_bytes, block_bytes);
            block_release(kv, old);
            seq->blocks[i] = fresh;
        }
    }
    return KV_OK;
}

void kv_seq_fork(struct kv_cache *kv, struct kv_seq *dst, const struct kv_seq *src) {
    for (int32_t i = 0; i < dst->n_blocks; i++) {
        block_release(kv, dst->blocks[i]);
    }
    /* Only the blocks that hold src's positions are shared; reserved-but-unwritten ones stay
     * with src. */
    int32_t n_used = (src->n_pos + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    for (int32_t i = 0; i < n_used; i++) {
        dst->blocks[i] = src->blocks[i];
        kv->refcount[src->blocks[i]]++;
    }
    dst->n_blocks = n_used;
    dst->n_pos = src->n_pos;
}

void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *seq, int32_t n_pos) {
    if (n_pos < 0) {
        n_pos = 0;
    }
    if (n_pos >= seq->n_pos) {
        return;
    }
    seq->n_pos = n_pos;
    int32_t n_keep = (n_pos + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    for (int32_t i = n_keep; i < seq->n_blocks; i++) {
        block_release(kv, seq->blocks[i]);
    }
    if (seq->n_blocks > n_keep) {
        seq->n_blocks = n_keep;
    }
}
