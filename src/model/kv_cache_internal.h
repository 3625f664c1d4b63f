/*
 * kv_cache_internal.h: the KV pool's layout, shared by kv_cache.c (which owns it) and model.c
 * (whose forward pass writes and reads blocks). Private to src/model; engine thread only.
 */
#ifndef GPTD_MODEL_KV_CACHE_INTERNAL_H
#define GPTD_MODEL_KV_CACHE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gptd/model.h"

struct kv_cache {
    float *data;       /* (n_blocks, L, 2, KV_BLOCK_SIZE, C): K then V per layer */
    int32_t *refcount; /* (n_blocks,) sequences holding the block; 0 = free */
    int32_t *free_ids; /* (n_blocks,) stack of free block ids */
    int32_t n_free;
    int32_t n_blocks;
    int32_t n_layer;
    int32_t n_embd;
    int32_t n_ctx;
    size_t block_floats; /* L * 2 * KV_BLOCK_SIZE * C */
};

/* K (is_v = 0) or V (is_v = 1) of layer l for position pos of seq: (C,) floats, heads
 * side by side (head h at [h*HS, (h+1)*HS)). pos must lie in a block the table holds. */
static inline float *kv_cache_row(const struct kv_cache *kv, const struct kv_seq *seq, int32_t l,
                                  int is_v, int32_t pos) {
    int32_t block = seq->blocks[pos / KV_BLOCK_SIZE];
    size_t off = (size_t)block * kv->block_floats +
                 (((size_t)l * 2 + (size_t)is_v) * KV_BLOCK_SIZE + (size_t)(pos % KV_BLOCK_SIZE)) *
                     (size_t)kv->n_embd;
    return kv->data + off;
}

#endif
