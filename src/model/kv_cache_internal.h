/*
 * kv_cache_internal.h: the KV pool's layout, shared by kv_cache.c (which owns it) and model.c
 * (whose forward pass writes and reads blocks). Private to src/model; engine thread only.
 */
#ifndef GPTD_MODEL_KV_CACHE_INTERNAL_H
#define GPTD_MODEL_KV_CACHE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <gptd/model.h>

#include "kernels.h"

struct kv_cache {
    void *data; /* (n_blocks, L, 2, KV_BLOCK_SIZE, KVD) elements: K then V per layer, KVD =
                   n_kv_head * head_dim */
    enum kernel_wtype etype; /* KERNEL_W_F32 or KERNEL_W_F16 */
    int32_t *refcount;       /* (n_blocks,) sequences holding the block; 0 = free */
    int32_t *free_ids;       /* (n_blocks,) stack of free block ids */
    int32_t n_free;
    int32_t n_blocks;
    int32_t n_layer;
    int32_t kv_dim; /* KVD: a position's K (or V) row, KV heads side by side */
    int32_t n_ctx;
    size_t block_elems; /* L * 2 * KV_BLOCK_SIZE * KVD */

    /* Prefix cache (kv_cache.c): a full block's chain key covers its parent's key and its
     * KV_BLOCK_SIZE token ids; keyed blocks are found through a hash of buckets. A keyed block
     * whose last holder lets go joins the LRU list instead of the free stack: it still counts
     * as free and is evicted (unkeyed) only when the free stack is empty. */
    uint64_t salt;           /* the chain's root key: the KV layout and dtype */
    uint64_t *key;           /* (n_blocks,) chain key, valid with BLOCK_HAS_KEY */
    uint64_t *parent_key;    /* (n_blocks,) the key it was chained from */
    int32_t *key_tokens;     /* (n_blocks, KV_BLOCK_SIZE) the ids the key was made of */
    uint8_t *flags;          /* (n_blocks,) BLOCK_HAS_KEY, BLOCK_IN_MAP */
    int32_t *bucket;         /* (bucket_mask + 1,) first block of each bucket, -1 = none */
    int32_t *next_in_bucket; /* (n_blocks,) */
    uint32_t bucket_mask;
    int32_t *lru_prev, *lru_next; /* (n_blocks,) evictable cached blocks, oldest first */
    int32_t lru_head, lru_tail, n_lru;
    int32_t n_in_map;
};

enum {
    BLOCK_HAS_KEY = 1, /* key/parent_key/key_tokens describe the block's full contents */
    BLOCK_IN_MAP = 2,  /* findable by prefix match (at most one block per key) */
};

/* Where K (is_v = 0) or V (is_v = 1) of layer l for position pos of seq starts, in elements
 * from kv->data: (KVD,) elements, KV heads side by side (head h at [h*HS, (h+1)*HS)). pos must
 * lie in a block the table holds. */
static inline size_t kv_cache_row_index(const struct kv_cache *kv, const struct kv_seq *seq,
                                        int32_t l, int is_v, int32_t pos) {
    int32_t block = seq->blocks[pos / KV_BLOCK_SIZE];
    return (size_t)block * kv->block_elems +
           (((size_t)l * 2 + (size_t)is_v) * KV_BLOCK_SIZE + (size_t)(pos % KV_BLOCK_SIZE)) *
               (size_t)kv->kv_dim;
}

/* The same row as floats: float32 caches only (tests poke at it). */
static inline float *kv_cache_row(const struct kv_cache *kv, const struct kv_seq *seq, int32_t l,
                                  int is_v, int32_t pos) {
    return (float *)kv->data + kv_cache_row_index(kv, seq, l, is_v, pos);
}

#endif
