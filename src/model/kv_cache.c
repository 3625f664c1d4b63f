/*
 * kv_cache.c: the paged KV cache (see model.h): one allocation of fixed-size blocks made at
 * start-up for a byte budget, a free stack, per-block reference counts, and per-sequence block
 * tables. Sequences of one group share blocks by reference (kv_seq_fork); a block about to be
 * written while shared is copied first (kv_seq_reserve), so forks never see each other's
 * tokens. Elements are float32 or (opt-in) IEEE half. Engine thread only: no locks.
 *
 * Prefix cache (model.h): full blocks carry a chain key (parent key + token ids, the ids kept
 * to rule out collisions) in a bucket hash; a keyed block that becomes free joins an LRU list
 * rather than the free stack and is evicted, oldest first, only when the free stack is empty.
 * Every table is allocated here at start-up: matching, committing and evicting allocate
 * nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gptd/model.h>
#include <gptd/util.h>

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
    /* 64-byte aligned for vector loads, on huge pages where possible (attention reads rows
     * kv_dim apart all over the pool). */
    kv->data = mem_alloc_large(n_blocks * block_bytes);
    kv->refcount = calloc(n_blocks, sizeof(*kv->refcount));
    kv->free_ids = malloc(n_blocks * sizeof(*kv->free_ids));
    uint32_t n_buckets = 16;
    while (n_buckets < 2 * n_blocks && n_buckets < (1u << 30)) {
        n_buckets *= 2;
    }
    kv->bucket_mask = n_buckets - 1;
    kv->key = calloc(n_blocks, sizeof(*kv->key));
    kv->parent_key = calloc(n_blocks, sizeof(*kv->parent_key));
    kv->key_tokens = calloc(n_blocks * KV_BLOCK_SIZE, sizeof(*kv->key_tokens));
    kv->flags = calloc(n_blocks, sizeof(*kv->flags));
    kv->bucket = malloc(n_buckets * sizeof(*kv->bucket));
    kv->next_in_bucket = malloc(n_blocks * sizeof(*kv->next_in_bucket));
    kv->lru_prev = malloc(n_blocks * sizeof(*kv->lru_prev));
    kv->lru_next = malloc(n_blocks * sizeof(*kv->lru_next));
    if (kv->data == NULL || kv->refcount == NULL || kv->free_ids == NULL || kv->key == NULL ||
        kv->parent_key == NULL || kv->key_tokens == NULL || kv->flags == NULL ||
        kv->bucket == NULL || kv->next_in_bucket == NULL || kv->lru_prev == NULL ||
        kv->lru_next == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < n_buckets; i++) {
        kv->bucket[i] = -1;
    }
    kv->lru_head = kv->lru_tail = -1;
    /* The chain's root: a block's K/V depend on the model and how they are stored. */
    kv->salt = 0x6770746470726566ULL ^ ((uint64_t)etype << 56) ^ ((uint64_t)kv->n_layer << 32) ^
               (uint64_t)(uint32_t)kv_dim;
    /* Touch every page now: the budget is committed at start-up (a server that cannot have it
     * should fail here, not mid-request), and no decode step pays first-touch page faults. */
    memset(kv->data, 0, n_blocks * block_bytes);
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
    free(kv->key);
    free(kv->parent_key);
    free(kv->key_tokens);
    free(kv->flags);
    free(kv->bucket);
    free(kv->next_in_bucket);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv);
}

int32_t kv_cache_n_blocks_total(const struct kv_cache *kv) {
    return kv->n_blocks;
}

int32_t kv_cache_n_blocks_free(const struct kv_cache *kv) {
    return kv->n_free + kv->n_lru; /* evictable cached blocks are free to take */
}

int32_t kv_cache_n_blocks_cached(const struct kv_cache *kv) {
    return kv->n_in_map;
}

int32_t kv_cache_n_blocks_evictable(const struct kv_cache *kv) {
    return kv->n_lru;
}

size_t kv_cache_bytes_per_block(const struct kv_cache *kv) {
    return kv->block_elems * kernel_wtype_size(kv->etype);
}

enum kv_dtype kv_cache_dtype(const struct kv_cache *kv) {
    return kv->etype == KERNEL_W_F16 ? KV_DTYPE_F16 : KV_DTYPE_F32;
}

/* ---- the prefix cache's tables ---- */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The chain key of a block of KV_BLOCK_SIZE ids after a block keyed parent. */
static uint64_t block_key(uint64_t parent, const int32_t *tokens) {
    uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ULL);
    for (int32_t i = 0; i < KV_BLOCK_SIZE; i++) {
        h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] + ((uint64_t)i << 32)));
    }
    return h;
}

static int32_t *bucket_of(struct kv_cache *kv, uint64_t key) {
    return &kv->bucket[(uint32_t)(key ^ (key >> 32)) & kv->bucket_mask];
}

/* The block in the map with this key, parent and ids, or -1. */
static int32_t map_find(struct kv_cache *kv, uint64_t key, uint64_t parent, const int32_t *tokens) {
    for (int32_t b = *bucket_of(kv, key); b >= 0; b = kv->next_in_bucket[b]) {
        if (kv->key[b] == key && kv->parent_key[b] == parent &&
            memcmp(kv->key_tokens + (size_t)b * KV_BLOCK_SIZE, tokens,
                   KV_BLOCK_SIZE * sizeof(*tokens)) == 0) {
            return b;
        }
    }
    return -1;
}

static void map_remove(struct kv_cache *kv, int32_t b) {
    int32_t *link = bucket_of(kv, kv->key[b]);
    while (*link >= 0 && *link != b) {
        link = &kv->next_in_bucket[*link];
    }
    if (*link == b) {
        *link = kv->next_in_bucket[b];
        kv->n_in_map--;
    }
    kv->flags[b] &= (uint8_t)~BLOCK_IN_MAP;
}

static void lru_push(struct kv_cache *kv, int32_t b) {
    kv->lru_prev[b] = kv->lru_tail;
    kv->lru_next[b] = -1;
    if (kv->lru_tail >= 0) {
        kv->lru_next[kv->lru_tail] = b;
    } else {
        kv->lru_head = b;
    }
    kv->lru_tail = b;
    kv->n_lru++;
}

static void lru_remove(struct kv_cache *kv, int32_t b) {
    if (kv->lru_prev[b] >= 0) {
        kv->lru_next[kv->lru_prev[b]] = kv->lru_next[b];
    } else {
        kv->lru_head = kv->lru_next[b];
    }
    if (kv->lru_next[b] >= 0) {
        kv->lru_prev[kv->lru_next[b]] = kv->lru_prev[b];
    } else {
        kv->lru_tail = kv->lru_prev[b];
    }
    kv->n_lru--;
}

/* The block's contents are about to change: it no longer stands for its key. */
static void block_unkey(struct kv_cache *kv, int32_t b) {
    if (kv->flags[b] & BLOCK_IN_MAP) {
        map_remove(kv, b);
    }
    kv->flags[b] = 0;
}

/* A free block: from the free stack, else the least recently used cached one (evicted). The
 * caller has checked kv_cache_n_blocks_free. */
static int32_t block_pop(struct kv_cache *kv) {
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_ids[--kv->n_free];
    } else {
        id = kv->lru_head;
        lru_remove(kv, id);
        block_unkey(kv, id);
    }
    kv->refcount[id] = 1;
    return id;
}

static void block_release(struct kv_cache *kv, int32_t id) {
    if (--kv->refcount[id] == 0) {
        if (kv->flags[id] & BLOCK_IN_MAP) {
            lru_push(kv, id); /* still a cached prefix: evicted only when needed */
        } else {
            kv->flags[id] = 0;
            kv->free_ids[kv->n_free++] = id;
        }
    }
}

int kv_seq_init(struct kv_seq *seq, const struct kv_cache *kv) {
    int32_t max_blocks = (kv->n_ctx + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE;
    seq->blocks = calloc((size_t)max_blocks, sizeof(*seq->blocks));
    seq->n_blocks = 0;
    seq->n_pos = 0;
    seq->n_keyed = 0;
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
    if (n_needed > kv_cache_n_blocks_free(kv)) {
        return KV_ERR_NO_BLOCKS;
    }
    if (seq->n_keyed > first) {
        seq->n_keyed = first; /* blocks from `first` on are written below */
    }
    for (int32_t i = first; i <= last; i++) {
        if (i >= seq->n_blocks) {
            seq->blocks[seq->n_blocks++] = block_pop(kv);
        } else if (kv->refcount[seq->blocks[i]] == 1 && kv->flags[seq->blocks[i]] != 0) {
            block_unkey(kv, seq->blocks[i]); /* ours alone: rewritten in place */
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
    dst->n_keyed = src->n_keyed < n_used ? src->n_keyed : n_used;
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
    if (seq->n_keyed > n_pos / KV_BLOCK_SIZE) {
        seq->n_keyed = n_pos / KV_BLOCK_SIZE;
    }
}

int32_t kv_seq_match_prefix(struct kv_cache *kv, struct kv_seq *seq, const int32_t *tokens,
                            int32_t n_tokens) {
    if (seq->n_blocks != 0 || seq->n_pos != 0) {
        return 0;
    }
    uint64_t parent = kv->salt;
    int32_t n = 0;
    while ((n + 1) * KV_BLOCK_SIZE <= n_tokens && n < seq->max_blocks) {
        const int32_t *t = tokens + (size_t)n * KV_BLOCK_SIZE;
        uint64_t key = block_key(parent, t);
        int32_t b = map_find(kv, key, parent, t);
        if (b < 0) {
            break;
        }
        if (kv->refcount[b] == 0) {
            lru_remove(kv, b);
        }
        kv->refcount[b]++;
        seq->blocks[n++] = b;
        parent = key;
    }
    seq->n_blocks = n;
    seq->n_pos = n * KV_BLOCK_SIZE;
    seq->n_keyed = n;
    return seq->n_pos;
}

void kv_seq_commit_prefix(struct kv_cache *kv, struct kv_seq *seq, const int32_t *tokens) {
    int32_t n_full = seq->n_pos / KV_BLOCK_SIZE;
    for (int32_t i = seq->n_keyed; i < n_full; i++) {
        int32_t b = seq->blocks[i];
        if (kv->flags[b] & BLOCK_HAS_KEY) {
            continue; /* shared with the sequence that keyed it, or matched from the cache */
        }
        uint64_t parent = i > 0 ? kv->key[seq->blocks[i - 1]] : kv->salt;
        const int32_t *t = tokens + (size_t)i * KV_BLOCK_SIZE;
        uint64_t key = block_key(parent, t);
        kv->key[b] = key;
        kv->parent_key[b] = parent;
        memcpy(kv->key_tokens + (size_t)b * KV_BLOCK_SIZE, t, KV_BLOCK_SIZE * sizeof(*t));
        kv->flags[b] = BLOCK_HAS_KEY;
        /* Two sequences may compute the same prefix at once: the first one keyed is the one
         * found; the other block keeps its key (its children chain from it) but stays out. */
        if (map_find(kv, key, parent, t) < 0) {
            int32_t *head = bucket_of(kv, key);
            kv->next_in_bucket[b] = *head;
            *head = b;
            kv->flags[b] |= BLOCK_IN_MAP;
            kv->n_in_map++;
        }
    }
    if (seq->n_keyed < n_full) {
        seq->n_keyed = n_full;
    }
}
