/*
 * tokenizer_load.c: builds a struct tokenizer from a model directory: tokenizer.json (Hugging
 * Face) or, when it is absent, vocab.json + merges.txt (the original GPT-2 files), then
 * tokenizer_config.json when present.
 *
 * Called once at start-up (main thread, or a test). This file reads the vocabulary files into
 * three lists (vocabulary strings with ids, merges as string pairs, added tokens) and runs the
 * load in order: the model's options and the pipeline's text steps (pipeline_load.c: they decide
 * the alphabet), the tables (vocab_build.c), the special tokens and post-processor
 * (pipeline_load.c), the added-token tries (added.c) and the cache. Every check names the file
 * and the problem; nothing a file contains can make the loader read out of bounds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "load_internal.h"

static void raw_vocab_finish(struct raw_vocab *raw) {
    free(raw->vocab);
    free(raw->merges);
    free(raw->added);
    memset(raw, 0, sizeof(*raw));
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

static int parse_tokenizer_json(cJSON *root, struct raw_vocab *raw, const char *file, char *err,
                                size_t err_size) {
    char q[48];
    if (!cJSON_IsObject(root)) {
        tok_set_err(err, err_size, "%s: the top level is not a JSON object", file);
        return -1;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        tok_set_err(err, err_size, "%s: \"model\" is missing or not an object", file);
        return -1;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) {
        tok_set_err(err, err_size, "%s: model.vocab is missing or not an object", file);
        return -1;
    }
    size_t n_vocab = (size_t)cJSON_GetArraySize(vocab);
    raw->vocab = calloc(n_vocab + 1, sizeof(*raw->vocab));
    if (raw->vocab == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        int ok;
        int32_t id = json_id(item, &ok);
        if (!ok) {
            tok_set_err(err, err_size, "%s: model.vocab[\"%s\"] is not an integer id", file,
                        tok_quote(item->string, strlen(item->string), q));
            return -1;
        }
        struct vocab_entry *v = &raw->vocab[raw->n_vocab++];
        v->str = item->string;
        v->len = strlen(item->string);
        v->id = id;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) {
        tok_set_err(err, err_size, "%s: model.merges is missing or not an array", file);
        return -1;
    }
    size_t n_merges = (size_t)cJSON_GetArraySize(merges);
    raw->merges = calloc(n_merges + 1, sizeof(*raw->merges));
    if (raw->merges == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
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
                tok_set_err(err, err_size,
                            "%s: merge %zu (\"%s\") is not two tokens split by a space", file, i,
                            tok_quote(s, strlen(s), q));
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
                tok_set_err(err, err_size, "%s: merge %zu has an empty token", file, i);
                return -1;
            }
        } else {
            tok_set_err(err, err_size,
                        "%s: merge %zu is neither a string \"a b\" nor a pair [\"a\", \"b\"]", file,
                        i);
            return -1;
        }
        raw->n_merges++;
    }

    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added != NULL && !cJSON_IsNull(added)) {
        if (!cJSON_IsArray(added)) {
            tok_set_err(err, err_size, "%s: added_tokens is not an array", file);
            return -1;
        }
        size_t n_added = (size_t)cJSON_GetArraySize(added);
        raw->added = calloc(n_added + 1, sizeof(*raw->added));
        if (raw->added == NULL) {
            tok_set_err(err, err_size, "%s: out of memory", file);
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
                tok_set_err(err, err_size,
                            "%s: added_tokens[%zu] needs an integer \"id\", a string \"content\" "
                            "and a boolean \"special\"",
                            file, raw->n_added);
                return -1;
            }
            /* The matching flags: lstrip, rstrip and normalized are implemented; single_word
             * is refused (no model gptd serves uses it, and a guess would mis-tokenize). */
            static const char *const flag_names[] = {"lstrip", "rstrip", "normalized",
                                                     "single_word"};
            int flags[4] = {0, 0, 0, 0};
            for (int k = 0; k < 4; k++) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(item, flag_names[k]);
                if (f != NULL && !cJSON_IsNull(f) && !cJSON_IsBool(f)) {
                    tok_set_err(err, err_size, "%s: added_tokens[%zu].%s is not a boolean", file,
                                raw->n_added, flag_names[k]);
                    return -1;
                }
                flags[k] = is_json_true(f);
            }
            if (flags[3]) {
                tok_set_err(err, err_size,
                            "%s: added_tokens[%zu].single_word true ('%s') is not supported", file,
                            raw->n_added,
                            tok_quote(content->valuestring, strlen(content->valuestring), q));
                return -1;
            }
            struct added_entry *a = &raw->added[raw->n_added++];
            a->str = content->valuestring;
            a->len = strlen(content->valuestring);
            a->id = id_value;
            a->is_special = is_json_true(special);
            a->lstrip = flags[0];
            a->rstrip = flags[1];
            a->normalized = flags[2];
        }
    }
    return 0;
}

/* ---- vocab.json + merges.txt ---------------------------------------------------------- */

static int parse_vocab_json(cJSON *root, struct raw_vocab *raw, const char *file, char *err,
                            size_t err_size) {
    char q[48];
    if (!cJSON_IsObject(root)) {
        tok_set_err(err, err_size, "%s: the top level is not a JSON object", file);
        return -1;
    }
    size_t n_vocab = (size_t)cJSON_GetArraySize(root);
    raw->vocab = calloc(n_vocab + 1, sizeof(*raw->vocab));
    raw->added = calloc(1, sizeof(*raw->added));
    if (raw->vocab == NULL || raw->added == NULL) {
        tok_set_err(err, err_size, "%s: out of memory", file);
        return -1;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        int ok;
        int32_t id = json_id(item, &ok);
        if (!ok) {
            tok_set_err(err, err_size, "%s: \"%s\" is not an integer id", file,
                        tok_quote(item->string, strlen(item->string), q));
            return -1;
        }
        struct vocab_entry *v = &raw->vocab[raw->n_vocab++];
        v->str = item->string;
        v->len = strlen(item->string);
        v->id = id;
        /* The original files carry no added-token list; Hugging Face's GPT2Tokenizer makes
         * <|endoftext|> special, and so do we. */
        if (strcmp(item->string, "<|endoftext|>") == 0 && raw->n_added == 0) {
            raw->added[0] = (struct added_entry){item->string, v->len, id, 1, 0, 0, 0};
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
        tok_set_err(err, err_size, "%s: out of memory", file);
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
            tok_set_err(err, err_size, "%s: line %zu holds a NUL byte", file, line_no);
            return -1;
        }
        if (len > 0 && !(len >= 8 && memcmp(p, "#version", 8) == 0)) {
            char *sp = memchr(p, ' ', len);
            if (sp == NULL || sp == p || sp == p + len - 1 ||
                memchr(sp + 1, ' ', len - (size_t)(sp + 1 - p)) != NULL) {
                tok_set_err(err, err_size,
                            "%s: line %zu (\"%s\") is not two tokens split by a space", file,
                            line_no, tok_quote(p, len, q));
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

/* The contents the normalized added tokens are matched by: their content through the
 * normalizer (as Hugging Face builds its second matcher). */
static int normalize_added(struct tokenizer *tok, char *err, size_t err_size) {
    struct bpe_scratch a = {0};
    struct bpe_scratch b = {0};
    struct bpe_scratch u32 = {0};
    size_t total = 0;
    size_t *off = calloc(tok->n_added + 1, sizeof(*off));
    size_t *len = calloc(tok->n_added + 1, sizeof(*len));
    char *blob = NULL;
    int rc = -1;
    if (off == NULL || len == NULL) {
        goto cleanup;
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        struct added_token *t = &tok->added[i];
        if (!t->normalized || tok->n_norm == 0) {
            continue;
        }
        size_t n;
        const char *p = normalize_apply(tok, t->bytes, t->n_bytes, &a, &b, &u32, &n);
        char *grown = p != NULL ? realloc(blob, total + n + 1) : NULL;
        if (grown == NULL) {
            goto cleanup;
        }
        blob = grown;
        memcpy(blob + total, p, n);
        off[i] = total;
        len[i] = n;
        total += n;
    }
    for (size_t i = 0; blob != NULL && i < tok->n_added; i++) {
        struct added_token *t = &tok->added[i];
        if (t->normalized && len[i] > 0) {
            t->bytes = blob + off[i];
            t->n_bytes = len[i];
        }
    }
    tok->added_blob = blob;
    blob = NULL;
    rc = 0;
cleanup:
    if (rc != 0) {
        tok_set_err(err, err_size, "tokenizer: out of memory");
    }
    free(blob);
    free(off);
    free(len);
    free(a.mem);
    free(b.mem);
    free(u32.mem);
    return rc;
}

/* See tokenizer_max_text_per_token. */
static size_t max_text_per_token(const struct tokenizer *tok) {
    size_t most = tok->max_token_bytes;
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].lstrip || tok->added[i].rstrip) {
            return 0;
        }
    }
    for (size_t k = 0; k < tok->n_norm; k++) {
        const struct norm_step *st = &tok->norm[k];
        if (st->kind == NORM_NFC) {
            most *= 3;
        } else if (st->kind == NORM_REPLACE && st->n_from > st->n_to) {
            if (st->n_to == 0) {
                return 0;
            }
            most *= (st->n_from + st->n_to - 1) / st->n_to;
        }
    }
    return most;
}

static int init_runtime(struct tokenizer *tok, char *err, size_t err_size) {
    if (normalize_added(tok, err, err_size) != 0) {
        return -1;
    }
    pipeline_plan_word_cut(tok);
    tok->max_text_per_token = max_text_per_token(tok);
    if (added_trie_build(tok, &tok->raw_trie, 0) != 0 ||
        added_trie_build(tok, &tok->norm_trie, 1) != 0) {
        tok_set_err(err, err_size, "tokenizer: out of memory");
        return -1;
    }
    for (int i = 0; i < BPE_CACHE_SHARDS; i++) {
        tok->cache[i].slots = calloc(BPE_CACHE_SLOTS, sizeof(*tok->cache[i].slots));
        if (tok->cache[i].slots == NULL) {
            tok_set_err(err, err_size, "tokenizer: out of memory");
            return -1;
        }
    }
    return 0;
}

/* tokenizer.json: the model's options and the text steps first (they decide the alphabet, which
 * the tables depend on), then the lists, the tables and the special tokens. */
static int load_tokenizer_json(struct tokenizer *tok, const char *path, const char *dir, char *err,
                               size_t err_size) {
    struct raw_vocab raw = {0};
    char *buf = NULL;
    cJSON *root = tok_parse_json_file(path, &buf, err, err_size);
    int rc = -1;
    if (root == NULL) {
        goto cleanup;
    }
    if (!cJSON_IsObject(root)) {
        tok_set_err(err, err_size, "%s: the top level is not a JSON object", path);
        goto cleanup;
    }
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "model"))) {
        tok_set_err(err, err_size, "%s: \"model\" is missing or not an object", path);
        goto cleanup;
    }
    if (pipeline_load_model_options(tok, root, path, err, err_size) != 0 ||
        pipeline_load_text_steps(tok, root, path, err, err_size) != 0 ||
        parse_tokenizer_json(root, &raw, path, err, err_size) != 0 ||
        vocab_build(tok, &raw, path, path, err, err_size) != 0 ||
        pipeline_load_specials(tok, root, path, dir, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
    raw_vocab_finish(&raw);
    cJSON_Delete(root);
    free(buf);
    return rc;
}

/* vocab.json + merges.txt: GPT-2's byte-level BPE with its own split, nothing else. */
static int load_gpt2_files(struct tokenizer *tok, const char *vocab_path, const char *merges_path,
                           const char *dir, char *err, size_t err_size) {
    struct raw_vocab raw = {0};
    char *json_buf = NULL;
    char *merges_buf = NULL;
    size_t n_merges_bytes;
    int rc = -1;
    tok->alphabet = BPE_ALPHABET_BYTES;
    cJSON *root = tok_parse_json_file(vocab_path, &json_buf, err, err_size);
    if (root == NULL || parse_vocab_json(root, &raw, vocab_path, err, err_size) != 0) {
        goto cleanup;
    }
    merges_buf = tok_read_file(merges_path, &n_merges_bytes, err, err_size);
    if (merges_buf == NULL ||
        parse_merges_txt(merges_buf, n_merges_bytes, &raw, merges_path, err, err_size) != 0 ||
        vocab_build(tok, &raw, vocab_path, merges_path, err, err_size) != 0 ||
        pipeline_use_gpt2_split(tok, err, err_size) != 0 ||
        pipeline_load_specials(tok, NULL, vocab_path, dir, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
    raw_vocab_finish(&raw);
    cJSON_Delete(root);
    free(json_buf);
    free(merges_buf);
    return rc;
}

struct tokenizer *tokenizer_load(const char *dir, char *err, size_t err_size) {
    tok_set_err(err, err_size, "ok");
    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        tok_set_err(err, err_size, "tokenizer: out of memory");
        return NULL;
    }
    for (int i = 0; i < BPE_CACHE_SHARDS; i++) {
        pthread_mutex_init(&tok->cache[i].lock, NULL);
    }
    tok->unk_id = -1;
    tok->bos_id = -1;
    tok->eos_id = -1;
    size_t n_path = strlen(dir) + 32;
    char *path = malloc(n_path);
    char *merges_path = malloc(n_path);
    int rc = -1;
    if (path == NULL || merges_path == NULL) {
        tok_set_err(err, err_size, "tokenizer: out of memory");
        goto cleanup;
    }
    snprintf(path, n_path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        if (load_tokenizer_json(tok, path, dir, err, err_size) != 0) {
            goto cleanup;
        }
    } else {
        snprintf(path, n_path, "%s/vocab.json", dir);
        snprintf(merges_path, n_path, "%s/merges.txt", dir);
        if (stat(path, &st) != 0) {
            tok_set_err(err, err_size,
                        "%s: neither tokenizer.json nor vocab.json + merges.txt found", dir);
            goto cleanup;
        }
        if (load_gpt2_files(tok, path, merges_path, dir, err, err_size) != 0) {
            goto cleanup;
        }
    }
    if (init_runtime(tok, err, err_size) != 0) {
        goto cleanup;
    }
    rc = 0;
cleanup:
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
    added_trie_free(&tok->raw_trie);
    added_trie_free(&tok->norm_trie);
    for (size_t i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].from);
        free(tok->norm[i].to);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->n_dec; i++) {
        free(tok->dec[i].from);
        free(tok->dec[i].to);
    }
    free(tok->dec);
    free(tok->prefix_ids);
    free(tok->suffix_ids);
    free(tok->added);
    free(tok->added_blob);
    free(tok->merges);
    free(tok->vocab_map);
    if (tok->key_blob != tok->blob) {
        free(tok->key_blob);
    }
    if (tok->key_off != tok->token_off) {
        free(tok->key_off);
    }
    free(tok->blob);
    free(tok->token_off);
    free(tok->is_valid);
    free(tok->is_special);
    free(tok);
}
