/*
 * tokenizer_load.c: builds a struct tokenizer from a model directory: tokenizer.json (Hugging
 * Face) or, when it is absent, vocab.json + merges.txt (the original GPT-2 files).
 *
 * Called once at start-up (main thread, or a test). Both loaders reduce their file to the same
 * three lists (vocabulary strings with ids, merges as string pairs, added tokens) and share one
 * builder, so they cannot disagree on what a vocabulary means. Every check names the file and the
 * problem; nothing a file contains can make the loader read out of bounds.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "tokenizer_internal.h"

/* Files larger than this are refused before reading: GPT-2's tokenizer.json is 3.5 MB. */
#define MAX_FILE_BYTES (256u << 20)
/* Ids must fit comfortably in the tables: ~16 M tokens is far beyond any GPT-2-style vocab. */
#define MAX_TOKEN_ID (1 << 24)

/*
 * The GPT-2 split pattern,
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelled out as WS, Unicode's White_Space property (25 code points, unchanged since
 * Unicode 6.3). Why: PCRE2 10.42's \s also matches U+180E MONGOLIAN VOWEL SEPARATOR, which
 * White_Space, and so Python's regex module that the original encoder uses, left out in 6.3; we
 * compared PCRE2's \s with Python regex's over the whole code space and that is the only
 * difference. Letters and numbers stay PCRE2's \p{L} and \p{N}. Keeping every class a plain
 * character class (no alternation inside a repeat) also keeps the JIT's stack use flat on a
 * 900,000-character run.
 */
#define WS                                                                                         \
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}" \
    "\\x{3000}"
static const char split_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                                    "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* A vocabulary entry as the file spells it (byte-level characters). Borrowed strings. */
struct vocab_entry {
    const char *str;
    size_t len;
    int32_t id;
};

/* One merge as the file spells it: two byte-level strings. Borrowed. */
struct merge_entry {
    const char *a;
    size_t n_a;
    const char *b;
    size_t n_b;
};

struct added_entry {
    const char *str;
    size_t len;
    int32_t id;
    int is_special;
};

/* The three lists both loaders produce. Arrays owned; strings borrowed from the parsed file. */
struct raw_vocab {
    struct vocab_entry *vocab;
    size_t n_vocab;
    struct merge_entry *merges;
    size_t n_merges;
    struct added_entry *added;
    size_t n_added;
};

static void raw_vocab_finish(struct raw_vocab *raw) {
    free(raw->vocab);
    free(raw->merges);
    free(raw->added);
    memset(raw, 0, sizeof(*raw));
}

static void set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (err == NULL || err_size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

/* Prints at most 40 bytes of a token for an error message, with non-printables as '?'. */
static const char *quote_token(const char *s, size_t n, char buf[48]) {
    size_t m = n < 40 ? n : 40;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    buf[m] = '\0';
    return buf;
}

/* Reads a whole file into a malloc'd NUL-terminated buffer. */
static char *read_file(const char *path, size_t *n_bytes, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        set_err(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, err_size, "%s: not a regular file", path);
        goto cleanup;
    }
    if ((unsigned long long)st.st_size > MAX_FILE_BYTES) {
        set_err(err, err_size, "%s: too large (%lld bytes)", path, (long long)st.st_size);
        goto cleanup;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        set_err(err, err_size, "%s: out of memory", path);
        goto cleanup;
    }
    if (fread(buf, 1, size, f) != size) {
        set_err(err, err_size, "%s: read error", path);
        free(buf);
        buf = NULL;
        goto cleanup;
    }
    buf[size] = '\0';
    *n_bytes = size;
cleanup:
    fclose(f);
    return buf;
}

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
    /* Code point 256 + k stands for the k-th byte (in byte order) that is not its own. */
    uint32_t k = cp - 256;
    for (int b = 0; b < 256; b++) {
        if (byte_level_unmap_cp((uint32_t)b) < 0 && k-- == 0) {
            return b;
        }
    }
    return -1;
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

static const char *token_ptr(const struct tokenizer *tok, int32_t id, size_t *n) {
    *n = tok->token_off[id + 1] - tok->token_off[id];
    return tok->blob + tok->token_off[id];
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
            const char *p = token_ptr(tok, s->id, &m);
            if (m == n && memcmp(p, bytes, n) == 0) {
                return s->id;
            }
        }
        i = (i + 1) & tok->vocab_map_mask;
    }
}

static size_t table_size_for(size_t n) {
    size_t size = 16;
    while (size < n * 2) {
        size *= 2;
    }
    return size;
}

/* ---- the shared builder --------------------------------------------------------------- */

static int cmp_added_longest_first(const void *pa, const void *pb) {
    const struct added_token *a = pa;
    const struct added_token *b = pb;
    if (a->n_bytes != b->n_bytes) {
        return a->n_bytes > b->n_bytes ? -1 : 1;
    }
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Turns the lists into the tokenizer's tables. file names the file the lists came from. */
static int build(struct tokenizer *tok, const struct raw_vocab *raw, const char *file,
                 const char *merges_file, char *err, size_t err_size) {
    char q1[48];
    char q2[48];
    char q3[48];
    int rc = -1;
    int32_t *added_of_id = NULL; /* (n_vocab): index into raw->added, or -1 */
    int32_t *vocab_of_id = NULL; /* (n_vocab): index into raw->vocab, or -1 */
    char *tmp = NULL;            /* scratch for one merge's raw bytes */
    size_t n_tmp = 0;

    if (raw->n_vocab == 0) {
        set_err(err, err_size, "%s: the vocabulary is empty", file);
        return -1;
    }
    /* Ids: the vocabulary plus added tokens must fit in [0, n_vocab + n_added). */
    size_t id_limit = raw->n_vocab + raw->n_added;
    if (id_limit > MAX_TOKEN_ID) {
        set_err(err, err_size, "%s: too many tokens (%zu)", file, id_limit);
        return -1;
    }
    int32_t max_id = -1;
    for (size_t i = 0; i < raw->n_vocab; i++) {
        int32_t id = raw->vocab[i].id;
        if (id < 0 || (size_t)id >= id_limit) {
            set_err(err, err_size, "%s: token '%s' has id %d, out of range [0, %zu)", file,
                    quote_token(raw->vocab[i].str, raw->vocab[i].len, q1), (int)id, id_limit);
            return -1;
        }
        max_id = id > max_id ? id : max_id;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        int32_t id = raw->added[i].id;
        if (id < 0 || (size_t)id >= id_limit) {
            set_err(err, err_size, "%s: added token '%s' has id %d, out of range [0, %zu)", file,
                    quote_token(raw->added[i].str, raw->added[i].len, q1), (int)id, id_limit);
            return -1;
        }
        if (raw->added[i].len == 0) {
            set_err(err, err_size, "%s: added token %d has empty content", file, (int)id);
            return -1;
        }
        max_id = id > max_id ? id : max_id;
    }
    tok->n_vocab = max_id + 1;
    size_t n_ids = (size_t)tok->n_vocab;

    added_of_id = malloc(n_ids * sizeof(*added_of_id));
    tok->token_off = calloc(n_ids + 1, sizeof(*tok->token_off));
    tok->is_valid = calloc(n_ids, 1);
    vocab_of_id = malloc(n_ids * sizeof(*vocab_of_id));
    if (added_of_id == NULL || tok->token_off == NULL || tok->is_valid == NULL ||
        vocab_of_id == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        goto cleanup;
    }
    for (size_t i = 0; i < n_ids; i++) {
        added_of_id[i] = -1;
        vocab_of_id[i] = -1;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        int32_t id = raw->added[i].id;
        if (added_of_id[id] >= 0) {
            set_err(err, err_size, "%s: duplicate added token id %d", file, (int)id);
            goto cleanup;
        }
        added_of_id[id] = (int32_t)i;
    }
    size_t total_bytes = 0;
    for (size_t i = 0; i < raw->n_vocab; i++) {
        int32_t id = raw->vocab[i].id;
        if (vocab_of_id[id] >= 0) {
            size_t j = (size_t)vocab_of_id[id];
            set_err(err, err_size, "%s: duplicate id %d (tokens '%s' and '%s')", file, (int)id,
                    quote_token(raw->vocab[j].str, raw->vocab[j].len, q1),
                    quote_token(raw->vocab[i].str, raw->vocab[i].len, q2));
            goto cleanup;
        }
        vocab_of_id[id] = (int32_t)i;
        total_bytes += raw->vocab[i].len;
    }
    for (size_t i = 0; i < raw->n_added; i++) {
        total_bytes += raw->added[i].len;
    }

    /* Every token's raw bytes into one blob, in id order. Unmapping never lengthens a string. */
    tok->blob = malloc(total_bytes + 1);
    if (tok->blob == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        goto cleanup;
    }
    size_t off = 0;
    for (size_t id = 0; id < n_ids; id++) {
        tok->token_off[id] = (uint32_t)off;
        int32_t iv = vocab_of_id[id];
        int32_t ia = added_of_id[id];
        if (ia >= 0) {
            /* An added token's content is plain text, not byte-level characters. If the
             * vocabulary also has this id, it must be the same string. */
            const struct added_entry *a = &raw->added[ia];
            if (iv >= 0 &&
                (raw->vocab[iv].len != a->len || memcmp(raw->vocab[iv].str, a->str, a->len) != 0)) {
                set_err(err, err_size,
                        "%s: added token '%s' has id %d, which the vocab gives to '%s'", file,
                        quote_token(a->str, a->len, q1), (int)id,
                        quote_token(raw->vocab[iv].str, raw->vocab[iv].len, q2));
                goto cleanup;
            }
            memcpy(tok->blob + off, a->str, a->len);
            off += a->len;
            tok->is_valid[id] = 1;
        } else if (iv >= 0) {
            const struct vocab_entry *v = &raw->vocab[iv];
            long m = byte_level_unmap(v->str, v->len, tok->blob + off);
            if (m < 0) {
                set_err(err, err_size,
                        "%s: token '%s' (id %d) has a character outside the byte-level alphabet",
                        file, quote_token(v->str, v->len, q1), (int)id);
                goto cleanup;
            }
            if (m == 0) {
                set_err(err, err_size, "%s: token id %d is an empty string", file, (int)id);
                goto cleanup;
            }
            off += (size_t)m;
            tok->is_valid[id] = 1;
        }
    }
    tok->token_off[n_ids] = (uint32_t)off;
    tok->max_token_bytes = 1;
    for (size_t id = 0; id < n_ids; id++) {
        size_t n = tok->token_off[id + 1] - tok->token_off[id];
        size_t n_out = utf8_replaced_len((const unsigned char *)tok->blob + tok->token_off[id], n);
        n = n_out > n ? n_out : n;
        tok->max_token_bytes = n > tok->max_token_bytes ? n : tok->max_token_bytes;
    }

    /* The bytes -> id map over vocabulary tokens (added-only tokens are matched separately). */
    size_t map_size = table_size_for(raw->n_vocab);
    tok->vocab_map = calloc(map_size, sizeof(*tok->vocab_map));
    if (tok->vocab_map == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        goto cleanup;
    }
    tok->vocab_map_mask = map_size - 1;
    for (size_t id = 0; id < n_ids; id++) {
        if (vocab_of_id[id] < 0) {
            continue;
        }
        size_t n;
        const char *p = token_ptr(tok, (int32_t)id, &n);
        uint64_t h = tokenizer_hash_bytes(p, n);
        int32_t other = tokenizer_vocab_lookup(tok, p, n, h);
        if (other >= 0) {
            set_err(
                err, err_size, "%s: tokens %d and %d are the same string '%s'", file, (int)other,
                (int)id,
                quote_token(raw->vocab[vocab_of_id[id]].str, raw->vocab[vocab_of_id[id]].len, q1));
            goto cleanup;
        }
        size_t i = (size_t)h & tok->vocab_map_mask;
        while (tok->vocab_map[i].hash != 0) {
            i = (i + 1) & tok->vocab_map_mask;
        }
        tok->vocab_map[i].hash = h;
        tok->vocab_map[i].id = (int32_t)id;
    }

    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        tok->byte_token[b] = tokenizer_vocab_lookup(tok, &c, 1, tokenizer_hash_bytes(&c, 1));
        if (tok->byte_token[b] < 0) {
            set_err(err, err_size, "%s: the vocab has no token for byte 0x%02x", file, b);
            goto cleanup;
        }
    }

    /* Merges: (left id, right id) -> (rank, merged id). A pair listed twice keeps its later
     * rank, as both Hugging Face and the original encoder (a Python dict) do. */
    size_t merges_size = table_size_for(raw->n_merges);
    tok->merges = calloc(merges_size, sizeof(*tok->merges));
    if (tok->merges == NULL) {
        set_err(err, err_size, "%s: out of memory", merges_file);
        goto cleanup;
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
                set_err(err, err_size, "%s: out of memory", merges_file);
                goto cleanup;
            }
        }
        char *a_bytes = tmp;
        long n_a = byte_level_unmap(me->a, me->n_a, a_bytes);
        long n_b = n_a < 0 ? -1 : byte_level_unmap(me->b, me->n_b, a_bytes + n_a);
        int32_t left = -1;
        int32_t right = -1;
        int32_t merged = -1;
        if (n_a > 0 && n_b > 0) {
            left = tokenizer_vocab_lookup(tok, a_bytes, (size_t)n_a,
                                          tokenizer_hash_bytes(a_bytes, (size_t)n_a));
            right = tokenizer_vocab_lookup(tok, a_bytes + n_a, (size_t)n_b,
                                           tokenizer_hash_bytes(a_bytes + n_a, (size_t)n_b));
            size_t n_ab = (size_t)(n_a + n_b);
            merged =
                tokenizer_vocab_lookup(tok, a_bytes, n_ab, tokenizer_hash_bytes(a_bytes, n_ab));
        }
        if (left < 0 || right < 0) {
            int is_left = left < 0;
            set_err(err, err_size, "%s: merge %zu ('%s' '%s') names the unknown token '%s'",
                    merges_file, i + 1, quote_token(me->a, me->n_a, q1),
                    quote_token(me->b, me->n_b, q2),
                    is_left ? quote_token(me->a, me->n_a, q3) : quote_token(me->b, me->n_b, q3));
            goto cleanup;
        }
        if (merged < 0) {
            set_err(err, err_size,
                    "%s: merge %zu ('%s' '%s'): their concatenation is not in the vocab",
                    merges_file, i + 1, quote_token(me->a, me->n_a, q1),
                    quote_token(me->b, me->n_b, q2));
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

    /* Added tokens, longest first: at one position the longest match wins. */
    tok->eos_id = -1;
    if (raw->n_added > 0) {
        tok->added = calloc(raw->n_added, sizeof(*tok->added));
        if (tok->added == NULL) {
            set_err(err, err_size, "%s: out of memory", file);
            goto cleanup;
        }
        for (size_t i = 0; i < raw->n_added; i++) {
            struct added_token *t = &tok->added[i];
            t->id = raw->added[i].id;
            t->is_special = raw->added[i].is_special;
            t->bytes = token_ptr(tok, t->id, &t->n_bytes);
        }
        tok->n_added = raw->n_added;
        qsort(tok->added, tok->n_added, sizeof(*tok->added), cmp_added_longest_first);
    }
    tok->eos_id = tokenizer_token_id(tok, "<|endoftext|>", strlen("<|endoftext|>"));
    rc = 0;
cleanup:
    free(tmp);
    free(vocab_of_id);
    free(added_of_id);
    return rc;
}

/* ---- tokenizer.json ------------------------------------------------------------------- */

/* Reads an integer id from a JSON number. Returns 0 (and *ok = 0) for a non-integer; an integer
 * beyond int32 comes back as INT32_MIN or INT32_MAX, so the range check reports it. */
static int32_t json_id(const cJSON *v, int *ok) {
    *ok = 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != v->valuedouble) {
        return 0;
    }
    double d = v->valuedouble;
    *ok = 1;
    if (d < -2147483648.0) {
        return INT32_MIN;
    }
    if (d > 2147483647.0) {
        return INT32_MAX;
    }
    if ((double)(int64_t)d != d) {
        *ok = 0;
        return 0;
    }
    return (int32_t)d;
}

static int is_json_true(const cJSON *v) {
    return v != NULL && cJSON_IsTrue(v);
}

/* A field that must be null, absent or an empty string for us to tokenize like HF does. */
static int is_unset(const cJSON *v) {
    return v == NULL || cJSON_IsNull(v) ||
           (cJSON_IsString(v) && v->valuestring != NULL && v->valuestring[0] == '\0');
}

static int parse_tokenizer_json(cJSON *root, struct raw_vocab *raw, const char *file, char *err,
                                size_t err_size) {
    char q[48];
    if (!cJSON_IsObject(root)) {
        set_err(err, err_size, "%s: the top level is not a JSON object", file);
        return -1;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        set_err(err, err_size, "%s: \"model\" is missing or not an object", file);
        return -1;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type != NULL && !(cJSON_IsString(type) && strcmp(type->valuestring, "BPE") == 0)) {
        set_err(err, err_size, "%s: model.type is not \"BPE\"", file);
        return -1;
    }
    if (!is_unset(cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix")) ||
        !is_unset(cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix")) ||
        is_json_true(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"))) {
        set_err(err, err_size,
                "%s: unsupported BPE options (continuing_subword_prefix, end_of_word_suffix or "
                "ignore_merges)",
                file);
        return -1;
    }
    const cJSON *normalizer = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (normalizer != NULL && !cJSON_IsNull(normalizer)) {
        set_err(err, err_size, "%s: unsupported normalizer (GPT-2 has none)", file);
        return -1;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *pre_type = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (!cJSON_IsString(pre_type) || strcmp(pre_type->valuestring, "ByteLevel") != 0 ||
        is_json_true(cJSON_GetObjectItemCaseSensitive(pre, "add_prefix_space")) ||
        cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pre, "use_regex"))) {
        set_err(err, err_size,
                "%s: unsupported pre_tokenizer (need ByteLevel with add_prefix_space false and "
                "use_regex true)",
                file);
        return -1;
    }

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) {
        set_err(err, err_size, "%s: model.vocab is missing or not an object", file);
        return -1;
    }
    size_t n_vocab = (size_t)cJSON_GetArraySize(vocab);
    raw->vocab = calloc(n_vocab + 1, sizeof(*raw->vocab));
    if (raw->vocab == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        int ok;
        int32_t id = json_id(item, &ok);
        if (!ok) {
            set_err(err, err_size, "%s: model.vocab[\"%s\"] is not an integer id", file,
                    quote_token(item->string, strlen(item->string), q));
            return -1;
        }
        struct vocab_entry *v = &raw->vocab[raw->n_vocab++];
        v->str = item->string;
        v->len = strlen(item->string);
        v->id = id;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) {
        set_err(err, err_size, "%s: model.merges is missing or not an array", file);
        return -1;
    }
    size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    raw->merges = calloc(n_merges + 1, sizeof(*raw->merges));
    if (raw->merges == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    cJSON_ArrayForEach(item, merges) {
        struct merge_entry *me = &raw->merges[raw->n_merges];
        size_t i = raw->n_merges + 1;
        if (cJSON_IsString(item)) {
            /* Older files: "a b". Byte-level tokens never hold a space, so one space splits. */
            const char *s = item->valuestring;
            const char *sp = strchr(s, ' ');
            if (sp == NULL || sp == s || sp[1] == '\0' || strchr(sp + 1, ' ') != NULL) {
                set_err(err, err_size, "%s: merge %zu (\"%s\") is not two tokens split by a space",
                        file, i, quote_token(s, strlen(s), q));
                return -1;
            }
            me->a = s;
            me->n_a = (size_t)(sp - s);
            me->b = sp + 1;
            me->n_b = strlen(sp + 1);
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(item, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(item, 1))) {
            me->a = cJSON_GetArrayItem(item, 0)->valuestring;
            me->n_a = strlen(me->a);
            me->b = cJSON_GetArrayItem(item, 1)->valuestring;
            me->n_b = strlen(me->b);
            if (me->n_a == 0 || me->n_b == 0) {
                set_err(err, err_size, "%s: merge %zu has an empty token", file, i);
                return -1;
            }
        } else {
            set_err(err, err_size,
                    "%s: merge %zu is neither a string \"a b\" nor a pair [\"a\", \"b\"]", file, i);
            return -1;
        }
        raw->n_merges++;
    }

    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added != NULL && !cJSON_IsNull(added)) {
        if (!cJSON_IsArray(added)) {
            set_err(err, err_size, "%s: added_tokens is not an array", file);
            return -1;
        }
        size_t n_added = (size_t)cJSON_GetArraySize(added);
        raw->added = calloc(n_added + 1, sizeof(*raw->added));
        if (raw->added == NULL) {
            set_err(err, err_size, "%s: out of memory", file);
            return -1;
        }
        cJSON_ArrayForEach(item, added) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
            const cJSON *special = cJSON_GetObjectItemCaseSensitive(item, "special");
            int ok;
            int32_t id_value = json_id(id, &ok);
            if (!cJSON_IsObject(item) || !ok || !cJSON_IsString(content) ||
                (special != NULL && !cJSON_IsBool(special))) {
                set_err(err, err_size,
                        "%s: added_tokens[%zu] needs an integer \"id\", a string \"content\" and "
                        "a boolean \"special\"",
                        file, raw->n_added);
                return -1;
            }
            struct added_entry *a = &raw->added[raw->n_added++];
            a->str = content->valuestring;
            a->len = strlen(content->valuestring);
            a->id = id_value;
            a->is_special = is_json_true(special);
        }
    }
    return 0;
}

static cJSON *parse_json_file(const char *path, char **buf_out, char *err, size_t err_size) {
    size_t n;
    char *buf = read_file(path, &n, err, err_size);
    if (buf == NULL) {
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, n, &end, 0);
    if (root == NULL) {
        size_t at = (end != NULL && end >= buf && end <= buf + n) ? (size_t)(end - buf) : 0;
        set_err(err, err_size, "%s: invalid JSON near byte %zu", path, at);
        free(buf);
        return NULL;
    }
    *buf_out = buf;
    return root;
}

/* ---- vocab.json + merges.txt ---------------------------------------------------------- */

static int parse_vocab_json(cJSON *root, struct raw_vocab *raw, const char *file, char *err,
                            size_t err_size) {
    char q[48];
    if (!cJSON_IsObject(root)) {
        set_err(err, err_size, "%s: the top level is not a JSON object", file);
        return -1;
    }
    size_t n_vocab = (size_t)cJSON_GetArraySize(root);
    raw->vocab = calloc(n_vocab + 1, sizeof(*raw->vocab));
    raw->added = calloc(1, sizeof(*raw->added));
    if (raw->vocab == NULL || raw->added == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        int ok;
        int32_t id = json_id(item, &ok);
        if (!ok) {
            set_err(err, err_size, "%s: \"%s\" is not an integer id", file,
                    quote_token(item->string, strlen(item->string), q));
            return -1;
        }
        struct vocab_entry *v = &raw->vocab[raw->n_vocab++];
        v->str = item->string;
        v->len = strlen(item->string);
        v->id = id;
        /* The original files carry no added-token list; Hugging Face's GPT2Tokenizer makes
         * <|endoftext|> special, and so do we. */
        if (strcmp(item->string, "<|endoftext|>") == 0 && raw->n_added == 0) {
            raw->added[0] = (struct added_entry){item->string, v->len, id, 1};
            raw->n_added = 1;
        }
    }
    return 0;
}

/* merges.txt: an optional "#version" line, then one "a b" merge per line. Splits buf in place. */
static int parse_merges_txt(char *buf, size_t n, struct raw_vocab *raw, const char *file, char *err,
                            size_t err_size) {
    char q[48];
    size_t n_lines = 1;
    for (size_t i = 0; i < n; i++) {
        n_lines += buf[i] == '\n';
    }
    raw->merges = calloc(n_lines, sizeof(*raw->merges));
    if (raw->merges == NULL) {
        set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    size_t line_no = 0;
    char *p = buf;
    char *end = buf + n;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl != NULL ? nl : end;
        line_no++;
        size_t len = (size_t)(line_end - p);
        if (len > 0 && p[len - 1] == '\r') {
            len--;
        }
        if (memchr(p, '\0', len) != NULL) {
            set_err(err, err_size, "%s: line %zu holds a NUL byte", file, line_no);
            return -1;
        }
        if (len > 0 && !(len >= 8 && memcmp(p, "#version", 8) == 0)) {
            char *sp = memchr(p, ' ', len);
            if (sp == NULL || sp == p || sp == p + len - 1 ||
                memchr(sp + 1, ' ', len - (size_t)(sp + 1 - p)) != NULL) {
                set_err(err, err_size, "%s: line %zu (\"%s\") is not two tokens split by a space",
                        file, line_no, quote_token(p, len, q));
                return -1;
            }
            struct merge_entry *me = &raw->merges[raw->n_merges++];
            me->a = p;
            me->n_a = (size_t)(sp - p);
            me->b = sp + 1;
            me->n_b = len - me->n_a - 1;
        }
        p = line_end + 1;
    }
    return 0;
}

/* ---- public --------------------------------------------------------------------------- */

static int init_runtime(struct tokenizer *tok, char *err, size_t err_size) {
    int code;
    PCRE2_SIZE at;
    tok->split_re = pcre2_compile((PCRE2_SPTR)split_pattern, PCRE2_ZERO_TERMINATED,
                                  PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
    if (tok->split_re == NULL) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(code, msg, sizeof(msg));
        set_err(err, err_size, "tokenizer: cannot compile the split pattern: %s", (char *)msg);
        return -1;
    }
    /* Without JIT (an exotic CPU) the interpreter gives the same matches, only slower. */
    (void)pcre2_jit_compile(tok->split_re, PCRE2_JIT_COMPLETE);
    for (int i = 0; i < BPE_CACHE_SHARDS; i++) {
        tok->cache[i].slots = calloc(BPE_CACHE_SLOTS, sizeof(*tok->cache[i].slots));
        if (tok->cache[i].slots == NULL) {
            set_err(err, err_size, "tokenizer: out of memory");
            return -1;
        }
    }
    return 0;
}

struct tokenizer *tokenizer_load(const char *dir, char *err, size_t err_size) {
    set_err(err, err_size, "ok");
    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        set_err(err, err_size, "tokenizer: out of memory");
        return NULL;
    }
    for (int i = 0; i < BPE_CACHE_SHARDS; i++) {
        pthread_mutex_init(&tok->cache[i].lock, NULL);
    }
    struct raw_vocab raw = {0};
    char *json_buf = NULL;
    char *merges_buf = NULL;
    cJSON *root = NULL;
    size_t n_path = strlen(dir) + 32;
    char *path = malloc(n_path);
    char *merges_path = malloc(n_path);
    int rc = -1;
    if (path == NULL || merges_path == NULL) {
        set_err(err, err_size, "tokenizer: out of memory");
        goto cleanup;
    }
    snprintf(path, n_path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        root = parse_json_file(path, &json_buf, err, err_size);
        if (root == NULL || parse_tokenizer_json(root, &raw, path, err, err_size) != 0 ||
            build(tok, &raw, path, path, err, err_size) != 0) {
            goto cleanup;
        }
    } else {
        snprintf(path, n_path, "%s/vocab.json", dir);
        snprintf(merges_path, n_path, "%s/merges.txt", dir);
        if (stat(path, &st) != 0) {
            set_err(err, err_size, "%s: neither tokenizer.json nor vocab.json + merges.txt found",
                    dir);
            goto cleanup;
        }
        size_t n_merges_bytes;
        root = parse_json_file(path, &json_buf, err, err_size);
        if (root == NULL || parse_vocab_json(root, &raw, path, err, err_size) != 0) {
            goto cleanup;
        }
        merges_buf = read_file(merges_path, &n_merges_bytes, err, err_size);
        if (merges_buf == NULL ||
            parse_merges_txt(merges_buf, n_merges_bytes, &raw, merges_path, err, err_size) != 0 ||
            build(tok, &raw, path, merges_path, err, err_size) != 0) {
            goto cleanup;
        }
    }
    if (init_runtime(tok, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
    raw_vocab_finish(&raw);
    cJSON_Delete(root);
    free(json_buf);
    free(merges_buf);
    free(path);
    free(merges_path);
    if (rc != 0) {
        tokenizer_destroy(tok);
        return NULL;
    }
    return tok;
}

void tokenizer_destroy(struct tokenizer *tok) {
    if (tok == NULL) {
        return;
    }
    for (int i = 0; i < BPE_CACHE_SHARDS; i++) {
        free(tok->cache[i].slots);
        pthread_mutex_destroy(&tok->cache[i].lock);
    }
    pcre2_code_free(tok->split_re);
    free(tok->added);
    free(tok->merges);
    free(tok->vocab_map);
    free(tok->blob);
    free(tok->token_off);
    free(tok->is_valid);
    free(tok);
}
