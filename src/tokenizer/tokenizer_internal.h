/*
 * tokenizer_internal.h: the layout of struct tokenizer, shared by the files of src/tokenizer/
 * only (tokenizer_load.c, vocab_build.c and pipeline_load.c build it; tokenizer.c, normalize.c,
 * added.c and bpe.c encode with it; detok.c decodes with it).
 *
 * DESIGN
 * - Two alphabets. BYTES (GPT-2, Llama 3, Qwen): a ByteLevel pre-tokenizer maps every byte to a
 *   printable character, so the model's strings are stored unmapped, as raw bytes, and a word
 *   starts as one symbol per byte. CHARS (SentencePiece-style: Llama 2, Mistral, Gemma): the
 *   model's strings are UTF-8 pieces with "▁" for a space; a word starts as one symbol per
 *   character, and a character the vocabulary lacks becomes its <0xNN> byte tokens.
 * - Every token has two spellings: key (what the model matches: raw bytes for BYTES, the piece
 *   for CHARS) and text (what decoding emits: the decoder's steps applied once, at load). For
 *   BYTES they are the same bytes and share one blob.
 * - BPE works on ids, never on strings: the merge table maps a pair (left id, right id) to its
 *   rank and the merged id. Ranks are merge-list positions, so a smaller rank merges first.
 * - Encoding is the Hugging Face pipeline: added tokens (non-normalized ones in the raw text) ->
 *   normalizer (per segment) -> added tokens marked normalized -> pre-tokenizer (Metaspace,
 *   one regex split) -> BPE per word -> post-processor ids (with TOKENIZER_ADD_SPECIAL).
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

/* Open-addressing map from a token's key spelling to its id, for the vocabulary. */
struct bytes_map_slot {
    uint64_t hash; /* 0 marks an empty slot */
    int32_t id;
};

/* An added token (<|endoftext|>, <s>, <|im_start|> ...): matched in text before BPE. */
struct added_token {
    int32_t id;
    unsigned char is_special; /* only matched with TOKENIZER_PARSE_SPECIAL */
    unsigned char lstrip;     /* the match takes the whitespace on its left */
    unsigned char rstrip;     /* and on its right */
    unsigned char normalized; /* matched in normalized text, by its normalized content */
    const char *bytes;        /* what is matched; borrowed from tok->blob or tok->added_blob */
    size_t n_bytes;
};

/* A byte trie over added tokens' contents: finds the leftmost, then longest, match. */
struct trie_edge {
    uint64_t key; /* (node << 8 | byte) + 1; 0 marks an empty slot */
    int32_t child;
};

struct added_trie {
    struct trie_edge *edges; /* (edges_mask + 1) */
    size_t edges_mask;
    int32_t *terminal; /* (n_nodes): index into tok->added of the token ending here, or -1 */
    size_t n_nodes;
    unsigned char can_start[256]; /* some token starts with this byte */
    int only_start;               /* the one byte every token starts with, or -1 */
    size_t n_tokens;              /* 0: the trie is empty and never searched */
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

enum bpe_alphabet {
    BPE_ALPHABET_BYTES, /* ByteLevel: one symbol per byte */
    BPE_ALPHABET_CHARS, /* SentencePiece-style: one symbol per character, byte fallback */
};

/* One normalizer step, applied in order to each segment of text between added tokens. */
enum norm_kind {
    NORM_NFC,     /* Unicode canonical composition (utf8proc) */
    NORM_PREPEND, /* `from` put in front of a non-empty segment */
    NORM_REPLACE, /* every `from` replaced by `to`, left to right */
};

struct norm_step {
    enum norm_kind kind;
    char *from; /* owned */
    size_t n_from;
    char *to; /* owned */
    size_t n_to;
};

/* What a split does with the pattern's matches (tokenizers' SplitDelimiterBehavior). */
enum split_behavior {
    SPLIT_ISOLATED,             /* matches and the text between them are separate words */
    SPLIT_REMOVED,              /* matches are dropped */
    SPLIT_MERGED_WITH_PREVIOUS, /* a match ends the word before it */
    SPLIT_MERGED_WITH_NEXT,     /* a match starts the word after it */
};

/* When the Metaspace pre-tokenizer puts its replacement in front of a segment. */
enum prepend_scheme {
    PREPEND_NEVER,
    PREPEND_FIRST, /* only before the segment that starts the text */
    PREPEND_ALWAYS,
};

/* One decoder step, as the loader applies it to every token's string (pipeline_load.c). */
enum dec_kind {
    DEC_REPLACE,       /* every `from` replaced by `to` */
    DEC_BYTE_FALLBACK, /* "<0xNN>" becomes the byte NN */
    DEC_STRIP,         /* per token (before a Fuse): up to n leading / n_end trailing `from` */
};

struct dec_step {
    enum dec_kind kind;
    char *from; /* owned */
    size_t n_from;
    char *to; /* owned */
    size_t n_to;
    size_t n_start;
    size_t n_end;
};

struct tokenizer {
    int32_t n_vocab;           /* size of the id space: largest id + 1 */
    char *blob;                /* every token's text (what decoding emits), concatenated */
    uint32_t *token_off;       /* (n_vocab + 1): token id's text is blob[off[id]..off[id+1]) */
    char *key_blob;            /* every token's key spelling; == blob for BYTES */
    uint32_t *key_off;         /* (n_vocab + 1); == token_off for BYTES */
    unsigned char *is_valid;   /* (n_vocab): 0 for a hole in the id space */
    unsigned char *is_special; /* (n_vocab): an added token marked special */
    size_t max_token_bytes;    /* see tokenizer_max_token_bytes */
    size_t max_text_per_token; /* see tokenizer_max_text_per_token */

    enum bpe_alphabet alphabet;
    struct bytes_map_slot *vocab_map; /* (vocab_map_mask + 1): vocabulary tokens by key */
    size_t vocab_map_mask;

    struct bpe_merge_slot *merges; /* (merges_mask + 1) */
    size_t merges_mask;

    int32_t byte_token[256];          /* BYTES: id of the token that is exactly this byte */
    int32_t byte_fallback_token[256]; /* CHARS: id of "<0xNN>", or -1 */
    int32_t char_token[128];          /* CHARS: id of the one-ASCII-character piece, or -1 */
    int byte_fallback;                /* CHARS: unknown characters become byte tokens */
    int32_t unk_id;                   /* CHARS: model.unk_token's id, or -1 */
    int fuse_unk;                     /* consecutive unknown characters give one unk */
    int ignore_merges;                /* a word that is a vocabulary token is that token */

    struct added_token *added; /* (n_added) */
    size_t n_added;
    char *added_blob; /* normalized contents of the tokens marked normalized */
    struct added_trie raw_trie;
    struct added_trie norm_trie;
    int32_t eos_id;
    int32_t bos_id;

    struct norm_step *norm; /* (n_norm) */
    size_t n_norm;
    int has_nfc;

    int has_metaspace; /* the Metaspace pre-tokenizer: ' ' -> ms_rep, prepend per ms_prepend */
    char ms_rep[8];
    size_t n_ms_rep;
    enum prepend_scheme ms_prepend;

    pcre2_code *split_re; /* the pre-tokenizer's split pattern, JIT-compiled; NULL: no split */
    enum split_behavior split_behavior;

    /* CHARS: a word may be cut before a run of cut_sep ("▁") -- BPE each part alone -- when
     * the character before the run is none of cut_unsafe (the characters that precede an
     * inner "▁" in some token), so no token can span the cut (pipeline_plan_word_cut). Whole
     * paragraphs are one word without a pre-tokenizer; this keeps BPE and its cache local. */
    char cut_sep[8];
    size_t n_cut_sep; /* 0: no cutting */
    char cut_unsafe[16][4];
    unsigned char cut_unsafe_len[16];
    size_t n_cut_unsafe;

    struct dec_step *dec; /* (n_dec): the decoder's per-token steps (CHARS only) */
    size_t n_dec;
    size_t dec_strip_start;    /* Strip after Fuse: leading dec_strip_char of the whole text */
    char dec_strip_char;       /* (ASCII) */
    int dec_strip_first_token; /* Metaspace decoder: one leading ' ' of the first token */

    int32_t *prefix_ids; /* the post-processor's ids before the text (BOS) */
    size_t n_prefix;
    int32_t *suffix_ids; /* and after it */
    size_t n_suffix;

    struct bpe_cache_shard cache[BPE_CACHE_SHARDS];
};

/* ---- shared helpers (load_util.c) ----------------------------------------------------- */

/* snprintf into err (if err_size > 0). */
void tok_set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* At most 40 bytes of a token for an error message, non-printables as '?'. Returns buf. */
const char *tok_quote(const char *s, size_t n, char buf[48]);

/* Reads a whole regular file (at most 256 MB) into a malloc'd NUL-terminated buffer. */
char *tok_read_file(const char *path, size_t *n_bytes, char *err, size_t err_size);

/* Reads and parses a JSON file; *buf_out gets the text (free it after the tree). Returns the
 * tree (cJSON *, declared void * to keep cJSON out of this header) or NULL with err set. */
void *tok_parse_json_file(const char *path, char **buf_out, char *err, size_t err_size);

/* Whether s[0..n) is valid UTF-8 (strict: no overlongs, surrogates or code points > U+10FFFF).
 * Returns the offset of the first invalid byte, or n. */
size_t tok_utf8_first_invalid(const unsigned char *s, size_t n);

/* Length of the UTF-8 character lead byte c starts (1..4), 0 for a byte that cannot start one. */
size_t tok_utf8_lead_len(unsigned char c);

/* Finds needle in hay; returns its offset or SIZE_MAX. */
size_t tok_find(const char *hay, size_t n_hay, const char *needle, size_t n_needle);

/* ---- vocabulary ----------------------------------------------------------------------- */

/* 64-bit hash of bytes; never 0 (0 marks empty slots). */
uint64_t tokenizer_hash_bytes(const void *bytes, size_t n);

/* Id of the vocabulary token whose key is exactly these bytes, or -1 (added-only tokens are not
 * in the map). */
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

/* ---- encoding ------------------------------------------------------------------------- */

/* Scratch memory for one encode call, grown as needed and reused for every piece of the call so
 * the hot path does not allocate. */
struct bpe_scratch {
    void *mem;
    size_t cap_bytes;
};

/* Grows s to at least n bytes (keeping nothing). Returns 0, or -1 when out of memory. */
int scratch_reserve(struct bpe_scratch *s, size_t n);

/* BPE-encodes one word (its key bytes: raw bytes for BYTES, normalized UTF-8 for CHARS):
 * appends its ids to *ids (grown with realloc, cap *cap_ids). Uses and fills the cache.
 * Returns 0, -1 when out of memory, -3 when a character has no token (CHARS without byte
 * fallback or unk). */
int bpe_encode_word(struct tokenizer *tok, const unsigned char *word, size_t n,
                    struct bpe_scratch *scratch, int32_t **ids, size_t *n_ids, size_t *cap_ids);

/* Applies the normalizer steps to text[0..n): returns the normalized text (text itself when no
 * step changes anything, else a pointer into one of the two buffers) and its length in *n_out,
 * or NULL when out of memory. u32 is scratch for NFC. */
const char *normalize_apply(const struct tokenizer *tok, const char *text, size_t n,
                            struct bpe_scratch *buf_a, struct bpe_scratch *buf_b,
                            struct bpe_scratch *u32, size_t *n_out);

/* Builds a trie over the added tokens with normalized == which (tok->added must be final).
 * Returns 0, or -1 when out of memory. */
int added_trie_build(const struct tokenizer *tok, struct added_trie *trie, int which);

void added_trie_free(struct added_trie *trie);

/* Finds the leftmost-longest added token of trie in text[from..len) that may match under flags
 * (special tokens only with TOKENIZER_PARSE_SPECIAL). Returns its index in tok->added and sets
 * [*start, *end) to the span it takes (lstrip/rstrip whitespace included, never before from),
 * or returns -1. */
long added_find(const struct tokenizer *tok, const struct added_trie *trie, const char *text,
                size_t len, size_t from, int flags, size_t *start, size_t *end);

/* ---- decoding ------------------------------------------------------------------------- */

/* Byte length of the UTF-8 decoding of bytes[0..n) with each maximal invalid subpart replaced
 * by U+FFFD (3 bytes), as Python's errors="replace" does. */
size_t utf8_replaced_len(const unsigned char *bytes, size_t n);

#endif
