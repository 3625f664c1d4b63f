/*
 * tokenizer_internal.h: the layout of struct tokenizer, shared by the files of src/tokenizer/
 * only (tokenizer_load.c builds it, bpe.c and tokenizer.c read it, detok.c decodes with it).
 *
 * DESIGN
 * - Every token, vocabulary or added, is stored as its raw bytes (byte-level characters already
 *   unmapped) in one blob; token_off[id]..token_off[id + 1] is its span. Holes in the id space
 *   have an empty span and is_valid[id] == 0.
 * - BPE works on ids, never on strings: the 256 single-byte tokens seed a word, and the merge
 *   table maps a pair (left id, right id) to its rank and the merged id. Ranks are merge-list
 *   positions, so a smaller rank merges first.
 * - After loading, everything here is read-only except the pre-token cache, which is sharded
 *   with one mutex per shard so HTTP threads can encode concurrently.
 */
#ifndef GPTD_TOKENIZER_INTERNAL_H
#define GPTD_TOKENIZER_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <gptd/tokenizer.h>

/* One merge: the pair (left, right) becomes merged, with priority rank (smaller first). */
struct bpe_merge_slot {
    uint64_t key; /* (left << 32 | right) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t merged;
};

/* Open-addressing map from raw token bytes to id, for the vocabulary. */
struct bytes_map_slot {
    uint64_t hash; /* 0 marks an empty slot */
    int32_t id;
};

/* An added token (<|endoftext|> and the like): matched in text before pre-tokenization. */
struct added_token {
    int32_t id;
    int is_special;    /* only matched with TOKENIZER_PARSE_SPECIAL */
    const char *bytes; /* borrowed: points into tokenizer.blob */
    size_t n_bytes;
};

/*
 * The pre-token cache: direct-mapped slots, one mutex per shard. A slot holds a short
 * pre-token's bytes and its ids; a longer pre-token or one with many ids is not cached. The
 * cache is bounded (BPE_CACHE_SHARDS * BPE_CACHE_SLOTS slots, allocated at load) and a new
 * entry simply replaces whatever sat in its slot.
 */
#define BPE_CACHE_SHARDS    16
#define BPE_CACHE_SLOTS     2048 /* per shard, a power of two */
#define BPE_CACHE_KEY_BYTES 30
#define BPE_CACHE_MAX_IDS   8

struct bpe_cache_slot {
    uint64_t hash; /* 0 marks an empty slot */
    uint8_t n_key;
    uint8_t n_ids;
    char key[BPE_CACHE_KEY_BYTES];
    int32_t ids[BPE_CACHE_MAX_IDS];
};

struct bpe_cache_shard {
    pthread_mutex_t lock;
    struct bpe_cache_slot *slots; /* (BPE_CACHE_SLOTS) */
};

struct tokenizer {
    int32_t n_vocab;         /* size of the id space: largest id + 1 */
    char *blob;              /* every token's raw bytes, concatenated */
    uint32_t *token_off;     /* (n_vocab + 1): token id's bytes are blob[off[id]..off[id+1]) */
    unsigned char *is_valid; /* (n_vocab): 0 for a hole in the id space */
    size_t max_token_bytes;  /* see tokenizer_max_token_bytes */

    struct bytes_map_slot *vocab_map; /* (vocab_map_mask + 1): vocabulary tokens by bytes */
    size_t vocab_map_mask;

    struct bpe_merge_slot *merges; /* (merges_mask + 1) */
    size_t merges_mask;

    int32_t byte_token[256]; /* id of the token that is exactly this one byte */

    struct added_token *added; /* (n_added), longest first so the longest match wins a tie */
    size_t n_added;
    int32_t eos_id;

    pcre2_code *split_re; /* the GPT-2 pre-tokenizer pattern, JIT-compiled */

    struct bpe_cache_shard cache[BPE_CACHE_SHARDS];
};

/* 64-bit hash of bytes; never 0 (0 marks empty slots). */
uint64_t tokenizer_hash_bytes(const void *bytes, size_t n);

/* Id of the vocabulary token with exactly these bytes, or -1 (added tokens not included). */
int32_t tokenizer_vocab_lookup(const struct tokenizer *tok, const char *bytes, size_t n,
                               uint64_t hash);

/* Looks up the merge of (left, right): returns its rank and sets *merged, or returns -1. */
static inline int32_t tokenizer_merge_lookup(const struct tokenizer *tok, int32_t left,
                                             int32_t right, int32_t *merged) {
    uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 32) & tok->merges_mask;
    for (;;) {
        const struct bpe_merge_slot *s = &tok->merges[i];
        if (s->key == key) {
            *merged = s->merged;
            return s->rank;
        }
        if (s->key == 0) {
            return -1;
        }
        i = (i + 1) & tok->merges_mask;
    }
}

/*
 * Scratch memory for one encode call, grown as needed and reused for every pre-token of the
 * call so the hot path does not allocate.
 */
struct bpe_scratch {
    void *mem;
    size_t cap_bytes;
};

/* BPE-encodes one pre-token (its raw bytes): appends its ids to *ids (grown with realloc, cap
 * *cap_ids). Uses and fills the cache. Returns 0, or -1 when out of memory. */
int bpe_encode_word(struct tokenizer *tok, const unsigned char *word, size_t n,
                    struct bpe_scratch *scratch, int32_t **ids, size_t *n_ids, size_t *cap_ids);

/* Byte length of the UTF-8 decoding of bytes[0..n) with each maximal invalid subpart replaced
 * by U+FFFD (3 bytes), as Python's errors="replace" does. */
size_t utf8_replaced_len(const unsigned char *bytes, size_t n);

#endif
