/*
 * vocab_build.c: turns the three lists a vocabulary file reduces to (tokens with ids, merges as
 * string pairs, added tokens) into struct tokenizer's tables, for either alphabet.
 *
 * Called once per load from tokenizer_load.c, for tokenizer.json and for vocab.json +
 * merges.txt alike, so the two layouts cannot disagree on what a vocabulary means. Checks ids
 * (range, duplicates), spellings (byte-level alphabet, or UTF-8 pieces), the 256 byte tokens of
 * a byte-level vocabulary and every merge, and refuses with the file and the problem.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "load_internal.h"

/* Ids must fit comfortably in the tables: ~16 M tokens is far beyond any vocabulary. */
#define MAX_TOKEN_ID (1 << 24)

/* ---- byte-level alphabet -------------------------------------------------------------- */

/*
 * GPT-2 gives each of the 256 bytes a printable character so that vocabulary strings are
 * readable: printable Latin-1 bytes stand for themselves, and the others (controls, space,
 * 0x7f-0xa0, 0xad) take the code points 256, 257, ... in byte order. Returns the byte that
 * code point cp stands for, or -1.
 */
static int byte_level_unmap_cp(uint32_t cp) {
    if (cp < 256) {
        int is_self = (cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae);
        return is_self ? (int)cp : -1;
    }
    /* Code point 256 + k stands for the k-th byte (in byte order) that is not its own: the 33
     * bytes 0x00-0x20, then the 34 bytes 0x7f-0xa0, then 0xad. */
    uint32_t k = cp - 256;
    return k <= 32 ? (int)k : k <= 66 ? (int)(k - 33 + 0x7f) : k == 67 ? 0xad : -1;
}

/* Decodes one UTF-8 code point at s[*i] (s has n bytes). Returns it, or -1 if invalid. */
static int32_t utf8_next(const unsigned char *s, size_t n, size_t *i) {
    unsigned char c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    if (len == 0 || *i + (size_t)len > n) {
        return -1;
    }
    uint32_t cp = c & (0x7f >> len);
    for (int k = 1; k < len; k++) {
        if ((s[*i + k] & 0xc0) != 0x80) {
            return -1;
        }
        cp = (cp << 6) | (s[*i + k] & 0x3f);
    }
    *i += (size_t)len;
    return (int32_t)cp;
}

/* Unmaps a byte-level string into raw bytes (out has room for n bytes). Returns the byte count,
 * or -1 when a character is outside the 256-character alphabet. */
static long byte_level_unmap(const char *s, size_t n, char *out) {
    size_t i = 0;
    long m = 0;
    while (i < n) {
        int32_t cp = utf8_next((const unsigned char *)s, n, &i);
        int b = cp < 0 ? -1 : byte_level_unmap_cp((uint32_t)cp);
        if (b < 0) {
            return -1;
        }
        out[m++] = (char)b;
    }
    return m;
}

/* ---- hash tables ---------------------------------------------------------------------- */

uint64_t tokenizer_hash_bytes(const void *bytes, size_t n) {
    /* A multiply-xorshift hash over 8-byte words: fast for short pre-tokens, good enough
     * spread for power-of-two tables. */
    const unsigned char *p = bytes;
    uint64_t h = 0x243F6A8885A308D3ull ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
    }
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 32;
    return h == 0 ? 1 : h;
}

static const char *key_ptr(const struct tokenizer *tok, int32_t id, size_t *n) {
    *n = tok->key_off[id + 1] - tok->key_off[id];
    return tok->key_blob + tok->key_off[id];
}

int32_t tokenizer_vocab_lookup(const struct tokenizer *tok, const char *bytes, size_t n,
                               uint64_t hash) {
    size_t i = (size_t)hash & tok->vocab_map_mask;
    for (;;) {
        const struct bytes_map_slot *s = &tok->vocab_map[i];
        if (s->hash == 0) {
            return -1;
        }
        if (s->hash == hash) {
            size_t m;
            const char *p = key_ptr(tok, s->id, &m);
            if (m == n && memcmp(p, bytes, n) == 0) {
                return s->id;
            }
        }
        i = (i + 1) & tok->vocab_map_mask;
    }
}

static int32_t lookup(const struct tokenizer *tok, const char *s, size_t n) {
    return tokenizer_vocab_lookup(tok, s, n, tokenizer_hash_bytes(s, n));
}

static size_t table_size_for(size_t n) {
    size_t size = 16;
    while (size < n * 2) {
        size *= 2;
    }
    return size;
}

/* A growing byte buffer for the blobs. */
struct growbuf {
    char *data;
    size_t len;
    size_t cap;
};

static int growbuf_reserve(struct growbuf *g, size_t more) {
    if (g->len + more <= g->cap) {
        return 0;
    }
    size_t cap = g->cap < 4096 ? 4096 : g->cap;
    while (cap < g->len + more) {
        cap *= 2;
    }
    char *data = realloc(g->data, cap);
    if (data == NULL) {
        return -1;
    }
    g->data = data;
    g->cap = cap;
    return 0;
}

/* ---- the builder ---------------------------------------------------------------------- */

/* Ids: checks ranges and duplicates and fills vocab_of_id / added_of_id (index into the lists,
 * or -1). Sets tok->n_vocab. */
static int check_ids(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                     int32_t **vocab_of_id, int32_t **added_of_id, char *err, size_t err_size) {
    char q1[48];
    char q2[48];
    if (raw->n_vocab == 0) {
        tok_set_err(err, err_size, "%s: the vocabulary is empty", file);
        return -1;
    }
    /* Ids: the vocabulary plus added tokens must fit in [0, n_vocab + n_added). */
    size_t id_limit = raw->n_vocab + raw->n_added;
    if (id_limit > MAX_TOKEN_ID) {
        tok_set_err(err, err_size, "%s: too many tokens (%zu)", file, id_limit);
        return -1;
    }
    int32_t max_id = -1;
    for (size_t i = 0; i < raw->n_vocab; i++) {
        int32_t id = raw->vocab[i].id;
        if (id < 0 || (size_t)id >= id_limit) {
            tok_set_err(err, err_size, "%s: token '%s' has id %d, out of range [0, %zu)", file,
                        tok_quote(raw->vocab[i].str, raw->vocab[i].len, q1), (int)id, id_limit);
            return -1;
        }
        max_id = id > max_id ? id : max_id;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        int32_t id = raw->added[i].id;
        if (id < 0 || (size_t)id >= id_limit) {
            tok_set_err(err, err_size, "%s: added token '%s' has id %d, out of range [0, %zu)",
                        file, tok_quote(raw->added[i].str, raw->added[i].len, q1), (int)id,
                        id_limit);
            return -1;
        }
        if (raw->added[i].len == 0) {
            tok_set_err(err, err_size, "%s: added token %d has empty content", file, (int)id);
            return -1;
        }
        max_id = id > max_id ? id : max_id;
    }
    tok->n_vocab = max_id + 1;
    size_t n_ids = (size_t)tok->n_vocab;
    *added_of_id = malloc(n_ids * sizeof(**added_of_id));
    *vocab_of_id = malloc(n_ids * sizeof(**vocab_of_id));
    if (*added_of_id == NULL || *vocab_of_id == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    for (size_t i = 0; i < n_ids; i++) {
        (*added_of_id)[i] = -1;
        (*vocab_of_id)[i] = -1;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        int32_t id = raw->added[i].id;
        if ((*added_of_id)[id] >= 0) {
            tok_set_err(err, err_size, "%s: duplicate added token id %d", file, (int)id);
            return -1;
        }
        (*added_of_id)[id] = (int32_t)i;
    }
    for (size_t i = 0; i < raw->n_vocab; i++) {
        int32_t id = raw->vocab[i].id;
        if ((*vocab_of_id)[id] >= 0) {
            size_t j = (size_t)(*vocab_of_id)[id];
            tok_set_err(err, err_size, "%s: duplicate id %d (tokens '%s' and '%s')", file, (int)id,
                        tok_quote(raw->vocab[j].str, raw->vocab[j].len, q1),
                        tok_quote(raw->vocab[i].str, raw->vocab[i].len, q2));
            return -1;
        }
        (*vocab_of_id)[id] = (int32_t)i;
    }
    return 0;
}

/*
 * Every token's key and text, in id order. BYTES: the key is the unmapped raw bytes and the text
 * is the same (one blob). CHARS: the key is the piece as the file spells it, the text the
 * decoder's steps applied to it. An added token's content is plain text in both alphabets; if
 * the vocabulary also has its id, it must be the same string.
 */
static int build_blobs(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                       const int32_t *vocab_of_id, const int32_t *added_of_id, char *err,
                       size_t err_size) {
    char q1[48];
    char q2[48];
    size_t n_ids = (size_t)tok->n_vocab;
    int is_bytes = tok->alphabet == BPE_ALPHABET_BYTES;
    struct growbuf text = {0};
    struct growbuf key = {0};
    tok->token_off = calloc(n_ids + 1, sizeof(*tok->token_off));
    tok->is_valid = calloc(n_ids, 1);
    tok->is_special = calloc(n_ids, 1);
    if (!is_bytes) {
        tok->key_off = calloc(n_ids + 1, sizeof(*tok->key_off));
    }
    if (tok->token_off == NULL || tok->is_valid == NULL || tok->is_special == NULL ||
        (!is_bytes && tok->key_off == NULL)) {
        goto oom;
    }
    for (size_t id = 0; id < n_ids; id++) {
        tok->token_off[id] = (uint32_t)text.len;
        if (!is_bytes) {
            tok->key_off[id] = (uint32_t)key.len;
        }
        int32_t iv = vocab_of_id[id];
        int32_t ia = added_of_id[id];
        const char *s = NULL;
        size_t n = 0;
        if (ia >= 0) {
            const struct added_entry *a = &raw->added[ia];
            if (iv >= 0 &&
                (raw->vocab[iv].len != a->len || memcmp(raw->vocab[iv].str, a->str, a->len) != 0)) {
                tok_set_err(err, err_size,
                            "%s: added token '%s' has id %d, which the vocab gives to '%s'", file,
                            tok_quote(a->str, a->len, q1), (int)id,
                            tok_quote(raw->vocab[iv].str, raw->vocab[iv].len, q2));
                goto fail;
            }
            s = a->str;
            n = a->len;
            tok->is_special[id] = (unsigned char)a->is_special;
        } else if (iv >= 0) {
            s = raw->vocab[iv].str;
            n = raw->vocab[iv].len;
            if (n == 0) {
                tok_set_err(err, err_size, "%s: token id %d is an empty string", file, (int)id);
                goto fail;
            }
        } else {
            continue; /* a hole in the id space */
        }
        tok->is_valid[id] = 1;
        if (growbuf_reserve(&text, n) != 0) {
            goto oom;
        }
        if (is_bytes) {
            if (ia >= 0) {
                memcpy(text.data + text.len, s, n);
                text.len += n;
                continue;
            }
            long m = byte_level_unmap(s, n, text.data + text.len);
            if (m < 0) {
                tok_set_err(err, err_size,
                            "%s: token '%s' (id %d) has a character outside the byte-level "
                            "alphabet",
                            file, tok_quote(s, n, q1), (int)id);
                goto fail;
            }
            text.len += (size_t)m;
            continue;
        }
        if (tok_utf8_first_invalid((const unsigned char *)s, n) != n) {
            tok_set_err(err, err_size, "%s: token id %d is not valid UTF-8", file, (int)id);
            goto fail;
        }
        if (growbuf_reserve(&key, n) != 0) {
            goto oom;
        }
        memcpy(key.data + key.len, s, n);
        key.len += n;
        /* The decoder's steps never lengthen a piece by more than their replacement sizes;
         * grow until the text fits. */
        size_t cap = n + 16;
        for (;;) {
            if (growbuf_reserve(&text, cap) != 0) {
                goto oom;
            }
            size_t m = pipeline_decode_piece(tok, s, n, text.data + text.len, cap);
            if (m != SIZE_MAX) {
                text.len += m;
                break;
            }
            cap *= 2;
        }
    }
    if (text.len > UINT32_MAX || key.len > UINT32_MAX) {
        tok_set_err(err, err_size, "%s: the vocabulary's strings exceed 4 GB", file);
        goto fail;
    }
    tok->token_off[n_ids] = (uint32_t)text.len;
    if (growbuf_reserve(&text, 1) != 0) {
        goto oom;
    }
    tok->blob = text.data;
    if (is_bytes) {
        tok->key_blob = tok->blob;
        tok->key_off = tok->token_off;
    } else {
        tok->key_off[n_ids] = (uint32_t)key.len;
        if (growbuf_reserve(&key, 1) != 0) {
            goto oom;
        }
        tok->key_blob = key.data;
    }
    return 0;
oom:
    tok_set_err(err, err_size, "%s: out of memory", file);
fail:
    free(text.data);
    free(key.data);
    return -1;
}

/* The key -> id map over vocabulary tokens (added-only tokens are matched separately). */
static int build_vocab_map(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                           const int32_t *vocab_of_id, char *err, size_t err_size) {
    char q1[48];
    size_t map_size = table_size_for(raw->n_vocab);
    tok->vocab_map = calloc(map_size, sizeof(*tok->vocab_map));
    if (tok->vocab_map == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    tok->vocab_map_mask = map_size - 1;
    for (size_t id = 0; id < (size_t)tok->n_vocab; id++) {
        if (vocab_of_id[id] < 0) {
            continue;
        }
        size_t n;
        const char *p = key_ptr(tok, (int32_t)id, &n);
        uint64_t h = tokenizer_hash_bytes(p, n);
        int32_t other = tokenizer_vocab_lookup(tok, p, n, h);
        if (other >= 0) {
            const struct vocab_entry *v = &raw->vocab[vocab_of_id[id]];
            tok_set_err(err, err_size, "%s: tokens %d and %d are the same string '%s'", file,
                        (int)other, (int)id, tok_quote(v->str, v->len, q1));
            return -1;
        }
        size_t i = (size_t)h & tok->vocab_map_mask;
        while (tok->vocab_map[i].hash != 0) {
            i = (i + 1) & tok->vocab_map_mask;
        }
        tok->vocab_map[i].hash = h;
        tok->vocab_map[i].id = (int32_t)id;
    }
    return 0;
}

/* The tables that seed a word: byte tokens (BYTES, all 256 required) or, for CHARS, the
 * <0xNN> tokens and the one-ASCII-character pieces. */
static int build_seed_tables(struct tokenizer *tok, const char *file, char *err, size_t err_size) {
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        tok->byte_token[b] = -1;
        tok->byte_fallback_token[b] = -1;
        if (tok->alphabet == BPE_ALPHABET_BYTES) {
            tok->byte_token[b] = lookup(tok, &c, 1);
            if (tok->byte_token[b] < 0) {
                tok_set_err(err, err_size, "%s: the vocab has no token for byte 0x%02x", file, b);
                return -1;
            }
            continue;
        }
        char piece[8];
        snprintf(piece, sizeof(piece), "<0x%02X>", b);
        tok->byte_fallback_token[b] = lookup(tok, piece, 6);
        if (b < 128) {
            tok->char_token[b] = lookup(tok, &c, 1);
        }
    }
    return 0;
}

/* Merges: (left id, right id) -> (rank, merged id). A pair listed twice keeps its later rank,
 * as both Hugging Face and the original encoder (a Python dict) do. */
static int build_merges(struct tokenizer *tok, const struct raw_vocab *raw, const char *merges_file,
                        char *err, size_t err_size) {
    char q1[48];
    char q2[48];
    char q3[48];
    int rc = -1;
    char *tmp = NULL; /* scratch for one merge's key bytes */
    size_t n_tmp = 0;
    size_t merges_size = table_size_for(raw->n_merges);
    tok->merges = calloc(merges_size, sizeof(*tok->merges));
    if (tok->merges == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", merges_file);
        return -1;
    }
    tok->merges_mask = merges_size - 1;
    for (size_t i = 0; i < raw->n_merges; i++) {
        const struct merge_entry *me = &raw->merges[i];
        /* Raw bytes are never longer than their byte-level spelling. */
        if (me->n_a + me->n_b + 1 > n_tmp) {
            n_tmp = 2 * (me->n_a + me->n_b + 1);
            free(tmp);
            tmp = malloc(n_tmp);
            if (tmp == NULL) {
                tok_set_err(err, err_size, "%s: out of memory", merges_file);
                goto cleanup;
            }
        }
        long n_a;
        long n_b;
        if (tok->alphabet == BPE_ALPHABET_BYTES) {
            n_a = byte_level_unmap(me->a, me->n_a, tmp);
            n_b = n_a < 0 ? -1 : byte_level_unmap(me->b, me->n_b, tmp + n_a);
        } else {
            memcpy(tmp, me->a, me->n_a);
            memcpy(tmp + me->n_a, me->b, me->n_b);
            n_a = (long)me->n_a;
            n_b = (long)me->n_b;
        }
        int32_t left = -1;
        int32_t right = -1;
        int32_t merged = -1;
        if (n_a > 0 && n_b > 0) {
            left = lookup(tok, tmp, (size_t)n_a);
            right = lookup(tok, tmp + n_a, (size_t)n_b);
            merged = lookup(tok, tmp, (size_t)(n_a + n_b));
        }
        if (left < 0 || right < 0) {
            int is_left = left < 0;
            tok_set_err(err, err_size, "%s: merge %zu ('%s' '%s') names the unknown token '%s'",
                        merges_file, i + 1, tok_quote(me->a, me->n_a, q1),
                        tok_quote(me->b, me->n_b, q2),
                        is_left ? tok_quote(me->a, me->n_a, q3) : tok_quote(me->b, me->n_b, q3));
            goto cleanup;
        }
        if (merged < 0) {
            tok_set_err(
                err, err_size, "%s: merge %zu ('%s' '%s'): their concatenation is not in the vocab",
                merges_file, i + 1, tok_quote(me->a, me->n_a, q1), tok_quote(me->b, me->n_b, q2));
            goto cleanup;
        }
        uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
        uint64_t h = key * 0x9E3779B97F4A7C15ull;
        size_t j = (size_t)(h >> 32) & tok->merges_mask;
        while (tok->merges[j].key != 0 && tok->merges[j].key != key) {
            j = (j + 1) & tok->merges_mask;
        }
        tok->merges[j].key = key;
        tok->merges[j].rank = (int32_t)i;
        tok->merges[j].merged = merged;
    }
    rc = 0;
cleanup:
    free(tmp);
    return rc;
}

/* The added tokens' match table: content (the token's text for BYTES, its key for CHARS;
 * both are the content as the file spells it) and flags. Normalized contents come later
 * (tokenizer_load.c, once the normalizer is known). */
static int build_added(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                       char *err, size_t err_size) {
    if (raw->n_added == 0) {
        return 0;
    }
    tok->added = calloc(raw->n_added, sizeof(*tok->added));
    if (tok->added == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        const struct added_entry *a = &raw->added[i];
        struct added_token *t = &tok->added[i];
        t->id = a->id;
        t->is_special = (unsigned char)a->is_special;
        t->lstrip = (unsigned char)a->lstrip;
        t->rstrip = (unsigned char)a->rstrip;
        t->normalized = (unsigned char)a->normalized;
        t->bytes = key_ptr(tok, t->id, &t->n_bytes);
    }
    tok->n_added = raw->n_added;
    return 0;
}

int vocab_build(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                const char *merges_file, char *err, size_t err_size) {
    int rc = -1;
    int32_t *added_of_id = NULL;
    int32_t *vocab_of_id = NULL;
    if (check_ids(tok, raw, file, &vocab_of_id, &added_of_id, err, err_size) != 0 ||
        build_blobs(tok, raw, file, vocab_of_id, added_of_id, err, err_size) != 0) {
        goto cleanup;
    }
    tok->max_token_bytes = 1;
    for (size_t id = 0; id < (size_t)tok->n_vocab; id++) {
        size_t n = tok->token_off[id + 1] - tok->token_off[id];
        size_t n_out = utf8_replaced_len((const unsigned char *)tok->blob + tok->token_off[id], n);
        n = n_out > n ? n_out : n;
        tok->max_token_bytes = n > tok->max_token_bytes ? n : tok->max_token_bytes;
    }
    if (build_vocab_map(tok, raw, file, vocab_of_id, err, err_size) != 0 ||
        build_seed_tables(tok, file, err, err_size) != 0 ||
        build_merges(tok, raw, merges_file, err, err_size) != 0 ||
        build_added(tok, raw, file, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
    free(vocab_of_id);
    free(added_of_id);
    return rc;
}
