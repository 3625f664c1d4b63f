/*
 * bpe.c: byte-pair merging of one pre-token, and the bounded pre-token cache in front of it.
 *
 * Called by tokenizer_encode (tokenizer.c) on whichever thread encodes; the only shared
 * mutable state is the cache, whose shards each sit behind their own mutex (held only for a
 * slot compare and copy, never across the merge work).
 *
 * DESIGN: the word starts as one symbol per byte (byte-level vocabularies) or per character
 * (SentencePiece-style ones: a character the vocabulary lacks becomes its <0xNN> byte tokens,
 * else the unknown token), kept in a doubly linked list over an array.
 * Every adjacent pair that has a merge goes into a binary min-heap keyed by (rank, position), so
 * the lowest rank merges first and, among equal ranks, the leftmost: the order Hugging Face's
 * BPE (and the original encoder's left-to-right sweep) produces. Merging a pair kills the right
 * symbol and pushes the (at most two) new pairs it forms with its neighbours; heap entries that
 * went stale are recognised on pop by their ids no longer matching. Each merge is O(log n), so a
 * 900,000-byte pre-token takes about a quarter of a second (bench_tokenizer), where a loop that
 * rescans all pairs after each merge would do some 10^11 lookups.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* A candidate merge: symbols at pos and next[pos] with ids left, right. */
struct heap_entry {
    uint64_t order; /* rank << 32 | pos: smaller merges first */
    int32_t left;
    int32_t right;
    int32_t merged; /* the pair's merge result, looked up once at push */
};

static void heap_push(struct heap_entry *heap, size_t *n, struct heap_entry e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent].order <= e.order) {
            break;
        }
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = e;
}

static struct heap_entry heap_pop(struct heap_entry *heap, size_t *n) {
    struct heap_entry top = heap[0];
    struct heap_entry last = heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) {
            break;
        }
        if (child + 1 < *n && heap[child + 1].order < heap[child].order) {
            child++;
        }
        if (last.order <= heap[child].order) {
            break;
        }
        heap[i] = heap[child];
        i = child;
    }
    if (*n > 0) {
        heap[i] = last;
    }
    return top;
}

static void push_pair(const struct tokenizer *tok, struct heap_entry *heap, size_t *n_heap,
                      int32_t pos, int32_t left, int32_t right) {
    int32_t merged;
    int32_t rank = tokenizer_merge_lookup(tok, left, right, &merged);
    if (rank >= 0) {
        struct heap_entry e = {((uint64_t)(uint32_t)rank << 32) | (uint32_t)pos, left, right,
                               merged};
        heap_push(heap, n_heap, e);
    }
}

static int append_ids(int32_t **ids, size_t *n_ids, size_t *cap_ids, size_t n_more) {
    if (*n_ids + n_more <= *cap_ids) {
        return 0;
    }
    size_t cap = *cap_ids < 64 ? 64 : *cap_ids;
    while (cap < *n_ids + n_more) {
        cap *= 2;
    }
    int32_t *grown = realloc(*ids, cap * sizeof(**ids));
    if (grown == NULL) {
        return -1;
    }
    *ids = grown;
    *cap_ids = cap;
    return 0;
}

/* The merge loop proper: the word's n_sym starting symbols are in mem's id array already;
 * writes the word's ids to out (room for n_sym) and returns their count. */
static size_t bpe_merge_word(const struct tokenizer *tok, size_t n, size_t n_sym, void *mem,
                             int32_t *out) {
    /* Layout of mem: id (n), next (n), prev (n), then the heap (up to 3n entries: n - 1 initial
     * pairs plus at most 2 per merge, and there are at most n - 1 merges). */
    int32_t *id = mem;
    int32_t *next = id + n;
    int32_t *prev = next + n;
    struct heap_entry *heap = (struct heap_entry *)(void *)(prev + n + (n & 1));
    size_t n_heap = 0;
    for (size_t i = 0; i < n_sym; i++) {
        next[i] = i + 1 < n_sym ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n_sym; i++) {
        push_pair(tok, heap, &n_heap, (int32_t)i, id[i], id[i + 1]);
    }
    while (n_heap > 0) {
        struct heap_entry e = heap_pop(heap, &n_heap);
        int32_t pos = (int32_t)(uint32_t)e.order;
        int32_t right_pos = next[pos];
        /* Stale if either symbol changed since the push: ids only grow longer, so a symbol
         * never returns to an id it had before. Dead symbols have id -1. */
        if (id[pos] != e.left || right_pos < 0 || id[right_pos] != e.right) {
            continue;
        }
        int32_t merged = e.merged;
        id[pos] = merged;
        id[right_pos] = -1;
        next[pos] = next[right_pos];
        if (next[pos] >= 0) {
            prev[next[pos]] = pos;
            push_pair(tok, heap, &n_heap, pos, merged, id[next[pos]]);
        }
        if (prev[pos] >= 0) {
            push_pair(tok, heap, &n_heap, prev[pos], id[prev[pos]], merged);
        }
    }
    size_t n_out = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) {
        out[n_out++] = id[i];
    }
    return n_out;
}

/* CHARS: one starting symbol per character of word (valid UTF-8) into id. Returns the count,
 * or -1 when a character has neither a token, nor byte tokens, nor an unknown token. */
static long seed_chars(const struct tokenizer *tok, const unsigned char *word, size_t n,
                       int32_t *id) {
    size_t n_sym = 0;
    int last_was_unk = 0;
    for (size_t i = 0; i < n;) {
        size_t len = tok_utf8_lead_len(word[i]);
        len = len == 0 || i + len > n ? 1 : len;
        int32_t t = len == 1 && word[i] < 0x80
                        ? tok->char_token[word[i]]
                        : tokenizer_vocab_lookup(tok, (const char *)word + i, len,
                                                 tokenizer_hash_bytes(word + i, len));
        if (t >= 0) {
            id[n_sym++] = t;
            last_was_unk = 0;
            i += len;
            continue;
        }
        int has_bytes = tok->byte_fallback;
        for (size_t k = 0; k < len && has_bytes; k++) {
            has_bytes = tok->byte_fallback_token[word[i + k]] >= 0;
        }
        if (has_bytes) {
            for (size_t k = 0; k < len; k++) {
                id[n_sym++] = tok->byte_fallback_token[word[i + k]];
            }
            last_was_unk = 0;
        } else if (tok->unk_id >= 0) {
            if (!(tok->fuse_unk && last_was_unk)) {
                id[n_sym++] = tok->unk_id;
            }
            last_was_unk = 1;
        } else {
            return -1;
        }
        i += len;
    }
    return (long)n_sym;
}

int bpe_encode_word(struct tokenizer *tok, const unsigned char *word, size_t n,
                    struct bpe_scratch *scratch, int32_t **ids, size_t *n_ids, size_t *cap_ids) {
    if (n == 0) {
        return 0;
    }
    if (n == 1 && tok->alphabet == BPE_ALPHABET_BYTES) {
        if (append_ids(ids, n_ids, cap_ids, 1) != 0) {
            return -1;
        }
        (*ids)[(*n_ids)++] = tok->byte_token[word[0]];
        return 0;
    }
    int is_cacheable = n <= BPE_CACHE_KEY_BYTES;
    uint64_t hash = 0;
    if (is_cacheable || tok->ignore_merges) {
        hash = tokenizer_hash_bytes(word, n);
    }
    if (tok->ignore_merges) {
        /* Llama 3: a word that is a vocabulary token is that token, whatever the merges say. */
        int32_t whole = tokenizer_vocab_lookup(tok, (const char *)word, n, hash);
        if (whole >= 0) {
            if (append_ids(ids, n_ids, cap_ids, 1) != 0) {
                return -1;
            }
            (*ids)[(*n_ids)++] = whole;
            return 0;
        }
    }
    struct bpe_cache_shard *shard = NULL;
    struct bpe_cache_slot *slot = NULL;
    if (is_cacheable) {
        shard = &tok->cache[hash % BPE_CACHE_SHARDS];
        slot = &shard->slots[(hash / BPE_CACHE_SHARDS) & (BPE_CACHE_SLOTS - 1)];
        int32_t hit[BPE_CACHE_MAX_IDS];
        int n_hit = -1;
        pthread_mutex_lock(&shard->lock);
        if (slot->hash == hash && slot->n_key == n && memcmp(slot->key, word, n) == 0) {
            n_hit = slot->n_ids;
            memcpy(hit, slot->ids, (size_t)n_hit * sizeof(hit[0]));
        }
        pthread_mutex_unlock(&shard->lock);
        if (n_hit >= 0) {
            if (append_ids(ids, n_ids, cap_ids, (size_t)n_hit) != 0) {
                return -1;
            }
            memcpy(*ids + *n_ids, hit, (size_t)n_hit * sizeof(hit[0]));
            *n_ids += (size_t)n_hit;
            return 0;
        }
    }
    size_t need = n * 3 * sizeof(int32_t) + 8 + n * 3 * sizeof(struct heap_entry);
    if (scratch_reserve(scratch, need) != 0 || append_ids(ids, n_ids, cap_ids, n) != 0) {
        return -1;
    }
    int32_t *seed = scratch->mem;
    size_t n_sym = n;
    if (tok->alphabet == BPE_ALPHABET_BYTES) {
        for (size_t i = 0; i < n; i++) {
            seed[i] = tok->byte_token[word[i]];
        }
    } else {
        long got = seed_chars(tok, word, n, seed);
        if (got < 0) {
            return -3;
        }
        n_sym = (size_t)got;
    }
    int32_t *out = *ids + *n_ids;
    size_t n_out = bpe_merge_word(tok, n, n_sym, scratch->mem, out);
    *n_ids += n_out;
    if (is_cacheable && n_out <= BPE_CACHE_MAX_IDS) {
        pthread_mutex_lock(&shard->lock);
        slot->hash = hash;
        slot->n_key = (uint8_t)n;
        slot->n_ids = (uint8_t)n_out;
        memcpy(slot->key, word, n);
        memcpy(slot->ids, out, n_out * sizeof(out[0]));
        pthread_mutex_unlock(&shard->lock);
    }
    return 0;
}
